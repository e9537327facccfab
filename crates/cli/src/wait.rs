//! `--wait`: polls DescribeInstances until every instance reaches the target state, printing each transition.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use hearth_api::v1::DescribeInstancesRequest;

use crate::connect::Session;
use crate::error::CliError;

/// How often DescribeInstances is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The state `--wait` waits for, and the states that mean it will never come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Running,
    Stopped,
    Terminated,
}

impl Goal {
    fn state(self) -> &'static str {
        match self {
            Goal::Running => "running",
            Goal::Stopped => "stopped",
            Goal::Terminated => "terminated",
        }
    }

    /// States from which the goal cannot be reached without another call (as the aws waiters judge).
    fn dead_end(self, state: &str) -> bool {
        match self {
            Goal::Running => matches!(state, "shutting-down" | "terminated" | "stopping" | "stopped"),
            Goal::Stopped => matches!(state, "pending" | "shutting-down" | "terminated"),
            Goal::Terminated => matches!(state, "pending" | "stopping"),
        }
    }
}

/// What one poll found for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub instance_id: String,
    pub state: String,
    /// `StateReason.Message` (or code), shown when an instance ends in a dead end.
    pub reason: String,
}

/// Where the wait stands after a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Waiting,
    Done,
    /// An instance reached a state the goal cannot follow; the message says which.
    Failed(String),
}

/// The per-instance states known so far; turns each poll into progress lines.
#[derive(Debug)]
pub struct Tracker {
    goal: Goal,
    states: BTreeMap<String, String>,
}

impl Tracker {
    /// Starts from the states the call itself reported (an empty string when unknown).
    pub fn new(goal: Goal, known: impl IntoIterator<Item = (String, String)>) -> Self {
        Tracker {
            goal,
            states: known.into_iter().collect(),
        }
    }

    /// Records one poll `elapsed` after the start: returns the lines to print and where the wait stands.
    pub fn observe(&mut self, seen: &[Seen], elapsed: Duration) -> (Vec<String>, Progress) {
        let mut lines = Vec::new();
        let mut failed = Vec::new();
        for instance in seen {
            let Some(previous) = self.states.get_mut(&instance.instance_id) else {
                continue;
            };
            if *previous != instance.state {
                lines.push(if previous.is_empty() {
                    format!(
                        "{} {} ({:.1} s)",
                        instance.instance_id,
                        instance.state,
                        elapsed.as_secs_f64()
                    )
                } else {
                    format!(
                        "{} {previous} → {} ({:.1} s)",
                        instance.instance_id,
                        instance.state,
                        elapsed.as_secs_f64()
                    )
                });
                *previous = instance.state.clone();
            }
            if self.goal.dead_end(&instance.state) {
                let reason = if instance.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", instance.reason)
                };
                failed.push(format!("{} is {}{reason}", instance.instance_id, instance.state));
            }
        }
        // Instances missing from the answer were purged: that is the end of a termination.
        for (id, state) in self.states.iter_mut() {
            if self.goal == Goal::Terminated && !seen.iter().any(|s| &s.instance_id == id) && state != "terminated" {
                lines.push(format!("{id} {state} → terminated ({:.1} s)", elapsed.as_secs_f64()));
                *state = "terminated".into();
            }
        }
        let progress = if !failed.is_empty() {
            Progress::Failed(format!(
                "Waiter for state {} failed: {}",
                self.goal.state(),
                failed.join("; ")
            ))
        } else if self.states.values().all(|s| s == self.goal.state()) {
            Progress::Done
        } else {
            Progress::Waiting
        };
        (lines, progress)
    }

    /// The instances not yet at the goal, for the timeout message.
    fn laggards(&self) -> String {
        let mut text: Vec<String> = self
            .states
            .iter()
            .filter(|(_, state)| *state != self.goal.state())
            .map(|(id, state)| format!("{id} ({})", if state.is_empty() { "unknown" } else { state }))
            .collect();
        text.sort();
        text.join(", ")
    }
}

/// Polls until every instance in `known` (id → state the call reported) reaches `goal`; progress goes to stderr.
pub async fn wait(
    session: &mut Session,
    goal: Goal,
    known: Vec<(String, String)>,
    timeout: Duration,
) -> Result<(), CliError> {
    let ids: Vec<String> = known.iter().map(|(id, _)| id.clone()).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut tracker = Tracker::new(goal, known);
    let start = Instant::now();
    let endpoint = session.endpoint().to_owned();
    loop {
        let request = session.request(DescribeInstancesRequest {
            instance_ids: ids.clone(),
            ..Default::default()
        });
        let seen = match session.client().await?.describe_instances(request).await {
            Ok(response) => response
                .into_inner()
                .reservations
                .into_iter()
                .flat_map(|r| r.instances)
                .map(|i| Seen {
                    instance_id: i.instance_id,
                    state: i.state.map(|s| s.name).unwrap_or_default(),
                    reason: i
                        .state_reason
                        .map(|r| if r.message.is_empty() { r.code } else { r.message })
                        .unwrap_or_default(),
                })
                .collect(),
            // Terminated instances are purged after a while; all of them gone is the end of a termination.
            Err(status)
                if goal == Goal::Terminated
                    && crate::error::ec2_error(&status)
                        .is_some_and(|(code, _)| code == "InvalidInstanceID.NotFound") =>
            {
                Vec::new()
            }
            Err(status) => return Err(CliError::from_status("DescribeInstances", &endpoint, &status)),
        };
        let (lines, progress) = tracker.observe(&seen, start.elapsed());
        let mut stderr = std::io::stderr().lock();
        for line in lines {
            let _ = writeln!(stderr, "{line}");
        }
        drop(stderr);
        match progress {
            Progress::Done => return Ok(()),
            Progress::Failed(message) => return Err(CliError::Wait(message)),
            Progress::Waiting => {}
        }
        if start.elapsed() >= timeout {
            return Err(CliError::Wait(format!(
                "Timed out after {:.1} s waiting for {}: {}",
                timeout.as_secs_f64(),
                goal.state(),
                tracker.laggards()
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, state: &str) -> Seen {
        Seen {
            instance_id: id.into(),
            state: state.into(),
            reason: String::new(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn prints_each_transition_once_until_all_arrive() {
        let mut tracker = Tracker::new(
            Goal::Running,
            [("i-1".into(), "pending".into()), ("i-2".into(), "pending".into())],
        );
        let (lines, progress) = tracker.observe(&[seen("i-1", "pending"), seen("i-2", "pending")], ms(100));
        assert!(lines.is_empty());
        assert_eq!(progress, Progress::Waiting);
        let (lines, progress) = tracker.observe(&[seen("i-1", "running"), seen("i-2", "pending")], ms(400));
        assert_eq!(lines, vec!["i-1 pending → running (0.4 s)"]);
        assert_eq!(progress, Progress::Waiting);
        let (lines, progress) = tracker.observe(&[seen("i-1", "running"), seen("i-2", "running")], ms(1250));
        assert_eq!(lines, vec!["i-2 pending → running (1.2 s)"]);
        assert_eq!(progress, Progress::Done);
    }

    #[test]
    fn unknown_start_state_prints_the_first_one_seen() {
        let mut tracker = Tracker::new(Goal::Running, [("i-1".into(), String::new())]);
        let (lines, progress) = tracker.observe(&[seen("i-1", "running")], ms(0));
        assert_eq!(lines, vec!["i-1 running (0.0 s)"]);
        assert_eq!(progress, Progress::Done);
    }

    #[test]
    fn a_dead_end_fails_the_wait_with_the_reason() {
        let mut tracker = Tracker::new(Goal::Running, [("i-1".into(), "pending".into())]);
        let crashed = Seen {
            reason: "guest crashed".into(),
            ..seen("i-1", "stopped")
        };
        let (lines, progress) = tracker.observe(&[crashed], ms(900));
        assert_eq!(lines, vec!["i-1 pending → stopped (0.9 s)"]);
        assert_eq!(
            progress,
            Progress::Failed("Waiter for state running failed: i-1 is stopped: guest crashed".into())
        );
    }

    #[test]
    fn purged_instances_count_as_terminated() {
        let mut tracker = Tracker::new(Goal::Terminated, [("i-1".into(), "shutting-down".into())]);
        let (lines, progress) = tracker.observe(&[], ms(2000));
        assert_eq!(lines, vec!["i-1 shutting-down → terminated (2.0 s)"]);
        assert_eq!(progress, Progress::Done);
    }

    #[test]
    fn laggards_name_the_instances_still_waited_for() {
        let mut tracker = Tracker::new(
            Goal::Stopped,
            [("i-1".into(), "stopping".into()), ("i-2".into(), "stopping".into())],
        );
        tracker.observe(&[seen("i-1", "stopped"), seen("i-2", "stopping")], ms(300));
        assert_eq!(tracker.laggards(), "i-2 (stopping)");
    }
}
