//! Reading the runner's stdout: frames are lines that start with the run's secret token;
//! anything else is stray output the tool wrote around the console capture. Reading stops
//! at a byte cap, so a flooding tool cannot make the worker buffer without bound.

use rand::RngExt as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt};

use shared::protocol::{ErrorKind, LogLine, Outcome, RunError, RunJob, RunResult};

use super::result;

/// Lines of stray output kept.
const STRAY_KEEP: usize = 100;

/// A fresh secret for one process's frames.
pub(super) fn new_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the runner says. One flat shape for every frame type: serde cannot read a borrowed
/// `RawValue` through an internally tagged enum.
#[derive(Debug, Deserialize)]
pub(super) struct Frame {
    #[serde(rename = "type")]
    pub kind: FrameKind,
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    value: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ErrorFrame>,
    #[serde(default)]
    logs: Vec<LogLine>,
    #[serde(default)]
    logs_truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum FrameKind {
    Ready,
    Result,
    LoadError,
}

#[derive(Debug, Deserialize)]
struct ErrorFrame {
    kind: ErrorKind,
    message: String,
    #[serde(default)]
    line: Option<u32>,
    #[serde(default)]
    column: Option<u32>,
}

#[derive(Debug)]
pub(super) enum ReadError {
    Flood(u64),
    Io(std::io::Error),
}

/// Output that was not a frame.
#[derive(Debug, Default)]
pub(super) struct Stray {
    lines: Vec<String>,
    dropped: bool,
}

/// Splits stdout into frames and stray lines.
pub(super) struct FrameReader<R> {
    inner: R,
    prefix: Vec<u8>,
    buffer: Vec<u8>,
    scanned: usize,
    total: u64,
    cap: u64,
    stray: Stray,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, token: String, cap: u64) -> Self {
        let mut prefix = token.into_bytes();
        prefix.push(b' ');
        Self {
            inner,
            prefix,
            buffer: Vec::with_capacity(8192),
            scanned: 0,
            total: 0,
            cap,
            stray: Stray::default(),
        }
    }

    /// The next frame, `None` at end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some(pos) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let line: Vec<u8> = self.buffer.drain(..=end).take(end).collect();
                self.scanned = 0;
                if let Some(frame) = self.frame_or_stray(&line) {
                    return Ok(Some(frame));
                }
            }
            self.scanned = self.buffer.len();
            let n = self.inner.read(&mut chunk).await.map_err(ReadError::Io)?;
            if n == 0 {
                let rest = std::mem::take(&mut self.buffer);
                self.scanned = 0;
                return Ok(self.frame_or_stray(&rest));
            }
            self.total += n as u64;
            if self.total > self.cap {
                return Err(ReadError::Flood(self.cap));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    fn frame_or_stray(&mut self, line: &[u8]) -> Option<Frame> {
        // A tool may leave a partial line before a frame; the frame starts at the token.
        if let Some(at) = find(line, &self.prefix) {
            let body = &line[at + self.prefix.len()..];
            if let Ok(frame) = serde_json::from_slice::<Frame>(body) {
                self.keep_stray(&line[..at]);
                return Some(frame);
            }
        }
        self.keep_stray(line);
        None
    }

    fn keep_stray(&mut self, bytes: &[u8]) {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        if self.stray.lines.len() < STRAY_KEEP {
            self.stray
                .lines
                .push(String::from_utf8_lossy(bytes).into_owned());
        } else {
            self.stray.dropped = true;
        }
    }

    /// Starts a new exchange: the byte budget counts from zero again.
    pub fn reset(&mut self, cap: u64) {
        self.total = 0;
        self.cap = cap;
    }

    /// The stray output collected since the last call.
    pub fn take_stray(&mut self) -> Stray {
        std::mem::take(&mut self.stray)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Turns the runner's final frame into a result, mapping positions to the agent's code.
pub(super) fn into_result(frame: Frame, job: &RunJob) -> RunResult {
    let outcome = match (frame.kind, frame.ok, frame.value, frame.error) {
        (FrameKind::Result, true, Some(raw), _) => match serde_json::from_str(raw.get()) {
            Ok(value) => Outcome::Ok { value },
            Err(error) => Outcome::Error {
                error: RunError::new(
                    ErrorKind::RuntimeError,
                    format!("the return value could not be read: {error}"),
                ),
            },
        },
        (_, _, _, Some(error)) => Outcome::Error {
            error: run_error(error, job),
        },
        (kind, ..) => Outcome::Error {
            error: RunError::new(
                ErrorKind::RuntimeError,
                format!("the runner sent an incomplete {kind:?} frame"),
            ),
        },
    };
    let mut result = result(&job.job_id, outcome);
    result.logs = frame.logs;
    result.logs_truncated = frame.logs_truncated;
    result
}

fn run_error(frame: ErrorFrame, job: &RunJob) -> RunError {
    let error = RunError::new(frame.kind, frame.message);
    match (frame.line, frame.column) {
        (Some(line), Some(column)) => {
            let position = job.code.to_user_position(line, column);
            error.at(position.line, position.column)
        }
        _ => error,
    }
}

/// Adds stray output to the result's console lines.
pub(super) fn attach_stray(result: &mut RunResult, stray: Stray) {
    for line in stray.lines {
        result.logs.push(LogLine {
            level: "stdout".into(),
            text: line,
        });
    }
    result.logs_truncated |= stray.dropped;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames_of(
        input: &str,
        token: &str,
        cap: u64,
    ) -> (Vec<String>, Result<(), u64>, Stray) {
        let mut reader = FrameReader::new(input.as_bytes(), token.to_owned(), cap);
        let mut seen = Vec::new();
        let end = loop {
            match reader.next().await {
                Ok(Some(frame)) => seen.push(format!("{:?}", frame.kind)),
                Ok(None) => break Ok(()),
                Err(ReadError::Flood(n)) => break Err(n),
                Err(ReadError::Io(e)) => panic!("{e}"),
            }
        };
        (seen, end, reader.take_stray())
    }

    #[tokio::test]
    async fn only_lines_with_the_token_are_frames() {
        let input = "hello\nFAKE {\"type\":\"ready\"}\n\nsecret {\"type\":\"ready\"}\n";
        let (frames, end, stray) = frames_of(input, "secret", 1 << 20).await;
        assert_eq!(frames, vec!["Ready"]);
        assert!(end.is_ok());
        assert_eq!(stray.lines, vec!["hello", "FAKE {\"type\":\"ready\"}"]);
    }

    #[tokio::test]
    async fn a_partial_line_before_a_frame_is_stray() {
        let (frames, _, stray) =
            frames_of("junk secret {\"type\":\"ready\"}\n", "secret", 1 << 20).await;
        assert_eq!(frames, vec!["Ready"]);
        assert_eq!(stray.lines, vec!["junk "]);
    }

    #[tokio::test]
    async fn floods_stop_at_the_cap() {
        let input = "x".repeat(200_000);
        let (_, end, _) = frames_of(&input, "secret", 100_000).await;
        assert_eq!(end, Err(100_000));
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
