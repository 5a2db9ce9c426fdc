//! No setup step: a command that needs the database creates it when the
//! server says it does not exist and the role may create it, or says
//! exactly what to run when it may not.

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::store::StoreError;

/// `invalid_catalog_name`: the database named in the url does not exist.
const NO_SUCH_DATABASE: &str = "3D000";
/// `insufficient_privilege`.
const NOT_ALLOWED: &str = "42501";
/// `duplicate_database`.
const ALREADY_EXISTS: &str = "42P04";

/// Whether `ensure_database` created the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Existed,
    Created,
}

/// Makes sure the database `url` names exists: creates it (through the
/// server's `postgres` database, as the same role) when the server says it
/// does not. Any other connection error is returned as it is (an outage is
/// for the caller to wait out).
pub async fn ensure_database(url: &str) -> Result<Ensured, StoreError> {
    let options: PgConnectOptions = url.parse()?;
    match PgConnection::connect_with(&options).await {
        Ok(conn) => {
            conn.close().await?;
            return Ok(Ensured::Existed);
        }
        Err(e) if code(&e).as_deref() == Some(NO_SUCH_DATABASE) => {}
        Err(e) => return Err(e.into()),
    }
    let role = options.get_username().to_owned();
    // no name in the url: PostgreSQL's default, the role's name
    let name = options.get_database().unwrap_or(&role).to_owned();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let created = create_database(&mut admin, &name).await;
    admin.close().await?;
    match created {
        Ok(()) => {
            tracing::info!(database = %name, "created the database");
            Ok(Ensured::Created)
        }
        // created meanwhile by another process
        Err(e) if code(&e).as_deref() == Some(ALREADY_EXISTS) => Ok(Ensured::Existed),
        Err(e) if code(&e).as_deref() == Some(NOT_ALLOWED) => Err(StoreError::Invalid(format!(
            "database {name:?} does not exist and role {role:?} may not create it: \
             create it as a role that may (`createdb -O {role} {name}`), or give {role:?} CREATEDB"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// A connection to the server itself, for creating and dropping
/// databases: to its `postgres` database, or, where the server has none
/// (some hosted services), to the database `options` name.
pub async fn server_connection(options: &PgConnectOptions) -> Result<PgConnection, StoreError> {
    match PgConnection::connect_with(&options.clone().database("postgres")).await {
        Ok(conn) => Ok(conn),
        Err(first) => PgConnection::connect_with(options).await.map_err(|second| {
            StoreError::Invalid(format!(
                "cannot connect to the server: its postgres database: {first}; \
                 the configured one: {second}"
            ))
        }),
    }
}

/// `create database "name"`.
pub async fn create_database(admin: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let sql = format!("create database {}", quote(name));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(admin)
        .await?;
    Ok(())
}

/// `drop database if exists "name" with (force)`: its sessions are ended.
pub async fn drop_database(admin: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let sql = format!("drop database if exists {} with (force)", quote(name));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(admin)
        .await?;
    Ok(())
}

/// An identifier, quoted.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQLSTATE of a database error.
fn code(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}
