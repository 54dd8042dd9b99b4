//! The `stepgate` binary: everything lives in the library; see [`stepgate::cli`].

// mimalloc (its v2 line): the decision path allocates many small, short-lived values
// (regorus values, protobuf messages); glibc's malloc spent ~12% of server CPU on them
// under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    stepgate::cli::run()
}
