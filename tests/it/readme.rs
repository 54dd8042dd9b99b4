//! README.md's examples, run as a reader runs them: the walk-through's server command
//! starts the real binary (found on `PATH` as `stepgate`), then every block marked
//! `walkthrough` runs in order in one directory, shell blocks with `sh`, Python blocks
//! in one Python session, and what each prints must be the `output` block after it
//! (`…` stands for any text within a line: ids, hashes, counts). The only change made
//! to the text is the listeners' addresses: the server gets ephemeral ports, and the
//! blocks' `127.0.0.1:9191` and `127.0.0.1:8181` are replaced by them.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use super::process::{BIN, ServeProcess};

/// A fenced code block of the README.
#[derive(Debug, Clone)]
struct Block {
    /// The words after the opening fence: the language, then tags.
    info: String,
    text: String,
    /// The line of its opening fence.
    line: usize,
}

impl Block {
    fn language(&self) -> &str {
        self.info.split_whitespace().next().unwrap_or("")
    }

    fn tagged(&self, tag: &str) -> bool {
        self.info.split_whitespace().skip(1).any(|t| t == tag)
    }
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (number, line) in markdown.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_string(),
                    text: String::new(),
                    line: number + 1,
                });
            }
            (Some(_), Some("")) => blocks.push(open.take().unwrap()),
            (Some(block), _) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md: a code block is never closed");
    blocks
}

fn readme() -> Vec<Block> {
    blocks(&std::fs::read_to_string("README.md").unwrap())
}

/// CI runs the README's test command (`.ci/run`), and readers start with its quick
/// start: both stay the first two shell blocks, word for word.
#[test]
fn the_readme_starts_with_the_quick_start_and_the_test_command() {
    let commands: Vec<String> = readme()
        .into_iter()
        .filter(|b| b.info == "sh")
        .take(2)
        .map(|b| b.text)
        .collect();
    assert_eq!(
        commands,
        ["cargo run --release -- serve\n", "cargo test --locked\n"]
    );
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    assert!(ci.lines().any(|l| l == "cargo test --locked"));
}

/// Whether `actual` is `expected`, where each `…` in `expected` stands for any text
/// within the line.
fn line_matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split('…').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return expected == actual;
    }
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn output_matches(expected: &str, actual: &str) -> bool {
    let expected: Vec<&str> = expected.trim_end().lines().collect();
    let actual: Vec<&str> = actual.trim_end().lines().collect();
    expected.len() == actual.len()
        && expected
            .iter()
            .zip(&actual)
            .all(|(e, a)| line_matches(e, a))
}

#[test]
fn an_ellipsis_stands_for_any_text_within_a_line() {
    assert!(output_matches(
        "ok: … records; hash …",
        "ok: 12 records; hash ab\n"
    ));
    assert!(output_matches("{\"id\":\"…\"}", "{\"id\":\"\"}"));
    assert!(!output_matches("ok: … records", "ok: 12 records\nmore"));
    assert!(!output_matches("a…b…c", "a-c-b"));
    assert!(!output_matches("ab…ba", "aba"));
}

/// The test venv, with grpcio-tools (made by `.ci/run` from
/// `tests/grpcio-client/requirements.txt`).
const VENV: &str = "tests/grpcio-client/.venv";

const SENTINEL: &str = "#-- end of README block --#";

/// One Python session: each block is run in the same namespace, as pasted into the
/// interpreter, and followed by a sentinel line so its output can be told apart.
const DRIVER: &str = r#"
import sys, traceback
namespace = {"__name__": "__main__"}
block = []
for line in sys.stdin:
    if line.rstrip("\n") != sys.argv[1]:
        block.append(line)
        continue
    try:
        exec(compile("".join(block), "<README block>", "exec"), namespace)
    except BaseException:
        traceback.print_exc(file=sys.stdout)
    block = []
    print(sys.argv[1], flush=True)
"#;

struct PythonSession {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl PythonSession {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(dir.join(".venv/bin/python"))
            .args(["-u", "-c", DRIVER, SENTINEL])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Runs `code`; what it printed.
    async fn run(&mut self, code: &str) -> String {
        let input = format!("{code}\n{SENTINEL}\n");
        self.stdin.write_all(input.as_bytes()).await.unwrap();
        let mut printed = String::new();
        let read = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                if line == SENTINEL {
                    return;
                }
                printed.push_str(&line);
                printed.push('\n');
            }
            panic!("python exited:\n{printed}");
        });
        read.await.expect("the block finishes within a minute");
        printed
    }
}

/// A directory as a reader's checkout looks to the walk-through: the policies and the
/// proto, and a `.venv` with grpcio-tools.
fn checkout(venv: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = std::env::current_dir().unwrap();
    for entry in ["policies", "proto"] {
        std::os::unix::fs::symlink(root.join(entry), dir.path().join(entry)).unwrap();
    }
    std::os::unix::fs::symlink(root.join(venv), dir.path().join(".venv")).unwrap();
    dir
}

/// `PATH` with the binary under test first, so the README's `stepgate` is it.
fn path_with_stepgate() -> String {
    let bin = PathBuf::from(BIN);
    let mut path = bin.parent().unwrap().display().to_string();
    if let Ok(rest) = std::env::var("PATH") {
        path = format!("{path}:{rest}");
    }
    path
}

#[tokio::test]
async fn the_walkthrough_works_as_written() {
    let venv = Path::new(VENV);
    let has_tools = std::process::Command::new(venv.join("bin/python"))
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_tools {
        let why = "grpcio-tools is needed: python3 -m venv tests/grpcio-client/.venv && tests/grpcio-client/.venv/bin/pip install -r tests/grpcio-client/requirements.txt";
        // CI installs it; there a missing one is a failure, not a skip.
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    }

    let blocks = readme();
    let servers: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.tagged("walkthrough-server"))
        .collect();
    assert_eq!(servers.len(), 1, "one server command");
    let server = servers[0].text.trim();
    assert!(
        server.starts_with("stepgate serve") && !server.contains('\n'),
        "{server}"
    );

    let dir = checkout(venv);
    let path = path_with_stepgate();
    let mut command = Command::new("sh");
    command
        .args(["-c", &format!("exec {server}")])
        .current_dir(dir.path())
        .env("PATH", &path)
        .env("STEPGATE_GRPC_ADDR", "127.0.0.1:0")
        .env("STEPGATE_HTTP_ADDR", "127.0.0.1:0");
    let stepgate = ServeProcess::start(command).await;
    let grpc = stepgate.grpc.expect("gRPC on TCP").to_string();
    let http = stepgate.http.expect("HTTP").to_string();
    let addressed = |text: &str| {
        text.replace("127.0.0.1:9191", &grpc)
            .replace("127.0.0.1:8181", &http)
    };

    let mut python = PythonSession::start(dir.path());
    let mut ran = 0;
    for (index, block) in blocks.iter().enumerate() {
        if !block.tagged("walkthrough") {
            continue;
        }
        let code = addressed(&block.text);
        let printed = match block.language() {
            "sh" => {
                let out = Command::new("sh")
                    .args(["-c", &code])
                    .current_dir(dir.path())
                    .env("PATH", &path)
                    .output()
                    .await
                    .unwrap();
                assert!(
                    out.status.success(),
                    "README.md:{}: {code}\n{}",
                    block.line,
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap()
            }
            "python" => python.run(&code).await,
            other => panic!("README.md:{}: cannot run {other}", block.line),
        };
        let expected = blocks
            .get(index + 1)
            .filter(|next| next.tagged("output"))
            .map_or("", |next| next.text.as_str());
        assert!(
            output_matches(expected, &printed),
            "README.md:{}: printed\n{printed}\nnot as documented:\n{expected}",
            block.line
        );
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} blocks ran");
    drop(python.stdin);
    let _ = python.child.wait().await;
    assert!(stepgate.stop().await.success());
}
