//! Progress of long commands on stderr.
//!
//! One line per step (`backup: dump`), always: they are few, and they say
//! in a log where a failed run stopped. While a step moves bytes, a
//! terminal also gets a line that is rewritten in place at most four times
//! a second (`backup: dump: 12.3 MiB, 40.1 MiB/s`); when stderr is not a
//! terminal that line is left out, and the step's total is printed once
//! when it ends. No terminal UI library: `\r` and padding are enough.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use warmspare_snapshot::Event;

use crate::output;

/// How often the in-place byte line is redrawn at most.
const REDRAW: Duration = Duration::from_millis(250);

/// Progress reporting of one command (`backup`, `restore`, `verify`).
#[derive(Debug)]
pub(crate) struct Progress {
    command: &'static str,
    terminal: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    step: Option<&'static str>,
    started: Instant,
    bytes: u64,
    drawn: Option<Instant>,
    /// Characters of the in-place line now on screen (0: none).
    width: usize,
}

impl Progress {
    /// Progress of `command`, drawn in place when stderr is a terminal.
    pub(crate) fn new(command: &'static str) -> Self {
        Self {
            command,
            terminal: std::io::stderr().is_terminal(),
            state: Mutex::new(State {
                step: None,
                started: Instant::now(),
                bytes: 0,
                drawn: None,
                width: 0,
            }),
        }
    }

    /// The callback to hand to the snapshot library.
    pub(crate) fn event(&self, event: Event) {
        match event {
            Event::Backup(step) => self.step(step.as_str()),
            Event::Restore(step) => self.step(step.as_str()),
            Event::DeepVerify(step) => self.step(step.as_str()),
            Event::Bytes(bytes) => self.bytes(bytes),
            _ => {}
        }
    }

    /// A step that the command runs itself (not reported by a library).
    pub(crate) fn step(&self, name: &'static str) {
        let mut state = self.lock();
        self.end_step(&mut state);
        state.step = Some(name);
        state.started = Instant::now();
        state.bytes = 0;
        state.drawn = None;
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}: {name}", self.command);
    }

    /// Ends the last step: its byte total, if it moved bytes.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        self.end_step(&mut state);
        state.step = None;
    }

    fn bytes(&self, bytes: u64) {
        let mut state = self.lock();
        state.bytes = bytes;
        if !self.terminal {
            return;
        }
        let now = Instant::now();
        if state
            .drawn
            .is_some_and(|at| now.duration_since(at) < REDRAW)
        {
            return;
        }
        state.drawn = Some(now);
        let line = self.byte_line(&state);
        let pad = state.width.saturating_sub(line.chars().count());
        state.width = line.chars().count();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}{}", " ".repeat(pad));
        let _ = err.flush();
    }

    fn end_step(&self, state: &mut State) {
        let had_line = state.width > 0;
        if state.step.is_some() && state.bytes > 0 {
            let line = self.byte_line(state);
            let pad = state.width.saturating_sub(line.chars().count());
            let mut err = std::io::stderr().lock();
            let start = if had_line { "\r" } else { "" };
            let _ = writeln!(err, "{start}{line}{}", " ".repeat(pad));
        } else if had_line {
            let _ = writeln!(std::io::stderr().lock());
        }
        state.width = 0;
    }

    fn byte_line(&self, state: &State) -> String {
        let elapsed = state.started.elapsed();
        format!(
            "{}: {}: {} in {}, {}/s",
            self.command,
            state.step.unwrap_or("?"),
            output::bytes(state.bytes),
            output::duration(elapsed),
            output::bytes(rate(state.bytes, elapsed)),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while printing poisons nothing worth refusing.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Bytes per second, rounded down; 0 before any time has passed.
fn rate(bytes: u64, elapsed: Duration) -> u64 {
    let millis = elapsed.as_millis();
    if millis == 0 {
        return 0;
    }
    u64::try_from(u128::from(bytes) * 1000 / millis).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(rate(1000, Duration::ZERO), 0);
        assert_eq!(rate(1000, Duration::from_millis(500)), 2000);
    }
}
