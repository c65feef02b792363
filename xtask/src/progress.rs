//! Progress for long steps (apt, the Bochs build, the kernel and guest builds): an indicatif
//! spinner or bar on a terminal, plain `xtask: ...` lines elsewhere (CI logs), so a slow step
//! always says what it is doing and for how long.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often a step without a terminal prints a "still running" line.
const PLAIN_INTERVAL: Duration = Duration::from_secs(20);

pub struct Step {
    what: String,
    bar: Option<ProgressBar>,
    start: Instant,
    last_plain: Instant,
    last_msg: String,
    pos: Option<u64>,
    len: Option<u64>,
    /// Say nothing at the start, and at the end only if the step took a while or did work.
    quiet_if_quick: bool,
}

impl Step {
    /// A step of unknown length (a spinner).
    pub fn new(what: impl Into<String>) -> Self {
        Self::make(what.into(), None, false)
    }

    /// A step that usually does nothing (an up-to-date cargo build): silent unless it works.
    pub fn quiet(what: impl Into<String>) -> Self {
        Self::make(what.into(), None, true)
    }

    fn make(what: String, len: Option<u64>, quiet_if_quick: bool) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = match len {
                Some(n) => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template("xtask: {prefix} [{bar:30}] {pos}/{len} {elapsed} {wide_msg}")
                        .expect("valid template")
                        .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("xtask: {prefix} {spinner} {elapsed} {wide_msg}")
                        .expect("valid template"),
                ),
            };
            pb.set_prefix(what.clone());
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        });
        if bar.is_none() && !quiet_if_quick {
            eprintln!("xtask: {what} ...");
        }
        let now = Instant::now();
        Self { what, bar, start: now, last_plain: now, last_msg: String::new(), pos: None, len, quiet_if_quick }
    }

    /// Turns the spinner into a bar of `len` units (e.g. once the number of files is known).
    pub fn set_length(&mut self, len: u64) {
        self.len = Some(len);
        if let Some(old) = self.bar.take() {
            old.finish_and_clear();
            let mut s = Self::make(self.what.clone(), Some(len), true);
            self.bar = s.bar.take();
        }
    }

    /// Reports how far the step is (`pos` units done) and what it does now.
    /// `msg` empty keeps the last message.
    pub fn update(&mut self, pos: Option<u64>, msg: &str) {
        if !msg.is_empty() {
            self.last_msg = msg.to_string();
        }
        if pos.is_some() {
            self.pos = pos;
        }
        match &self.bar {
            Some(pb) => {
                if let Some(p) = self.pos {
                    pb.set_position(p);
                }
                pb.set_message(self.last_msg.clone());
            }
            None if self.last_plain.elapsed() >= PLAIN_INTERVAL => {
                self.last_plain = Instant::now();
                let done = match (self.pos, self.len) {
                    (Some(p), Some(n)) => format!("{p}/{n} done; "),
                    (Some(p), None) => format!("{p} done; "),
                    _ => String::new(),
                };
                eprintln!(
                    "xtask: {}: {done}{} ({:.0} s)",
                    self.what,
                    self.last_msg,
                    self.start.elapsed().as_secs_f64()
                );
            }
            None => {}
        }
    }

    /// Ends the step with a line saying what it did and how long it took.
    pub fn done(self, result: &str) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
        let secs = self.start.elapsed().as_secs_f64();
        if !self.quiet_if_quick || secs >= 2.0 {
            eprintln!("xtask: {}: {result} in {secs:.1} s", self.what);
        }
    }

    pub fn failed(self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
        eprintln!("xtask: {}: failed after {:.1} s", self.what, self.start.elapsed().as_secs_f64());
    }
}

/// What a command printed (stdout and stderr interleaved by line) and how many lines `counts`
/// matched.
pub struct Output {
    pub lines: Vec<String>,
    pub counted: u64,
}

/// Runs `cmd` under `step`: every line of its output updates the step (lines for which
/// `counts` is true advance it), and a failure reports the last lines it printed.
pub fn run(cmd: &mut Command, step: &mut Step, counts: impl Fn(&str) -> bool) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{}: starting {program}", step.what))?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ]
    .into_iter()
    .map(|r| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).split(b'\n').map_while(Result::ok) {
                if tx.send(String::from_utf8_lossy(&line).trim_end().to_string()).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    let mut out = Output { lines: Vec::new(), counted: 0 };
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if counts(&line) {
                    out.counted += 1;
                }
                let short: String = line.chars().take(70).collect();
                step.update(Some(out.counted), &short);
                out.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => step.update(None, ""),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait()?;
    if !status.success() {
        let tail = &out.lines[out.lines.len().saturating_sub(40)..];
        bail!("{}: {program} failed ({status}); its last lines:\n{}", step.what, tail.join("\n"));
    }
    Ok(out)
}
