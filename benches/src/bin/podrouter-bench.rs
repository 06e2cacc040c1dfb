//! `podrouter-bench`: see [`podrouter_benches`] and the README's
//! "Benchmarks" section.
fn main() -> std::process::ExitCode {
    podrouter_benches::main()
}
