//! Pure types: account ids, keys, permissions, amounts, state changes.
//! Nothing here performs IO.

pub mod account_id;
pub mod amount;
pub mod change;
pub mod hash;
pub mod permission;
pub mod public_key;

pub use account_id::{AccountId, AccountIdError, AccountKind};
pub use amount::{YOCTO_PER_NEAR, Yocto};
pub use change::{
    AccessKey, AccountState, BlockHeader, Cause, CauseKind, ChangeValue, StateChange, Touched,
    TouchedKind,
};
pub use hash::CryptoHash;
pub use permission::{Permission, PermissionKind};
pub use public_key::{KeyType, PublicKey, PublicKeyError};
