//! Test support shared by the simulator's integration tests (a module of each test binary that
//! names it, not a test binary of its own).

pub mod kubectl;
