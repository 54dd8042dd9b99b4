//! The `stepgate` binary: everything lives in the library; see [`stepgate::cli`].
//!
//! The global allocator is mimalloc, installed by regorus (its `allocator-memory-limits`
//! feature, as `regorus-mimalloc`): it counts live bytes, which is what bounds an
//! evaluation's memory. A second `#[global_allocator]` here would not link, and any other
//! allocator would leave regorus' counters at zero and its memory limits without effect.

fn main() -> std::process::ExitCode {
    stepgate::cli::run()
}
