//! The `weft-cni` plugin binary: CNI_* environment and stdin in, a result or an error on stdout.

fn main() -> std::process::ExitCode {
    weft_cni::cli_main()
}
