//! A real `stepgate serve` process, as an operator or a deployment starts it: its
//! listeners' addresses come from its own log, so it can bind port 0.

use std::{
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stepgate");

/// A running `stepgate serve` with its policies loaded.
pub struct ServeProcess {
    child: Child,
    /// The gRPC TCP listener, when it has one.
    pub grpc: Option<SocketAddr>,
    /// The HTTP listener, when it has one.
    pub http: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

/// What the log said, line by line.
enum Event {
    Grpc(SocketAddr),
    Http(SocketAddr),
    Loaded,
}

impl ServeProcess {
    /// Spawns `command` (which runs `stepgate serve`) with JSON logs at info level on
    /// stderr, and waits until it has loaded its policies (it then serves); panics with
    /// the log when it exits first or takes more than a minute.
    pub async fn start(mut command: Command) -> Self {
        command
            .env("STEPGATE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("stepgate starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (events, mut received) = mpsc::unbounded_channel();
        let lines = log.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(event) = event_of(&line) {
                    let _ = events.send(event);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (mut grpc, mut http) = (None, None);
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(event) = received.recv().await {
                match event {
                    Event::Grpc(addr) => grpc = Some(addr),
                    Event::Http(addr) => http = Some(addr),
                    Event::Loaded => return true,
                }
            }
            false
        })
        .await;
        let process = Self {
            child,
            grpc,
            http,
            log,
        };
        assert!(
            waited == Ok(true),
            "stepgate did not load its policies:\n{}",
            process.log()
        );
        process
    }

    /// Every log line so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then the exit status (it drains and exits on its own).
    pub async fn stop(mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running") as i32;
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("stepgate exits after SIGTERM")
            .unwrap()
    }
}

/// The address a JSON log line reports a listener on, or whether it says the policies
/// loaded.
fn event_of(line: &str) -> Option<Event> {
    let record: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = &record["fields"];
    let addr = || fields["addr"].as_str()?.parse().ok();
    match fields["message"].as_str()? {
        "gRPC listening on TCP" => addr().map(Event::Grpc),
        message if message.starts_with("HTTP listening") => addr().map(Event::Http),
        "policy revision loaded" => Some(Event::Loaded),
        _ => None,
    }
}
