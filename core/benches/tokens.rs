//! Token benchmarks (filled in with the admin API work).
fn main() {}
