//! keywatch's integration tests: one binary, one link step.

mod samples;
