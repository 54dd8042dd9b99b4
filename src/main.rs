//! The `stepgate` binary: everything lives in the library; see [`stepgate::cli`].

fn main() -> std::process::ExitCode {
    stepgate::cli::run()
}
