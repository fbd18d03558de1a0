//! `mesh-control`: the registry daemon (see `mesh::control::cli`).

fn main() -> std::process::ExitCode {
    mesh::control::cli::main()
}
