//! `--wait`: polls DescribeInstances (DescribeVolumes, DescribeSnapshots) until every resource reaches the
//! target state, printing each transition.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use hearth_api::v1::{DescribeInstancesRequest, DescribeSnapshotsRequest, DescribeVolumesRequest, Volume};
use tonic::Status;

use crate::connect::Session;
use crate::error::CliError;

/// How often the resources are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The state `--wait` waits for, and the states that mean it will never come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Running,
    Stopped,
    Terminated,
    /// A volume created or detached: `available`.
    VolumeAvailable,
    /// A volume attached: `in-use`, its attachment `attached`.
    VolumeInUse,
    /// A volume deleted (or gone).
    VolumeDeleted,
    /// A snapshot taken or copied.
    SnapshotCompleted,
}

/// What a goal polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Instance,
    Volume,
    Snapshot,
}

impl Goal {
    /// The target state, as the messages name it.
    fn state(self) -> &'static str {
        match self {
            Goal::Running => "running",
            Goal::Stopped => "stopped",
            Goal::Terminated => "terminated",
            Goal::VolumeAvailable => "available",
            Goal::VolumeInUse => "in-use",
            Goal::VolumeDeleted => "deleted",
            Goal::SnapshotCompleted => "completed",
        }
    }

    fn resource(self) -> Resource {
        match self {
            Goal::Running | Goal::Stopped | Goal::Terminated => Resource::Instance,
            Goal::VolumeAvailable | Goal::VolumeInUse | Goal::VolumeDeleted => Resource::Volume,
            Goal::SnapshotCompleted => Resource::Snapshot,
        }
    }

    /// Whether `state` (as [`volume_state`] reports volumes) is the goal.
    fn reached(self, state: &str) -> bool {
        match self {
            // An in-use volume shows its attachment's state; `in-use` alone when that is unknown.
            Goal::VolumeInUse => matches!(state, "attached" | "in-use"),
            _ => state == self.state(),
        }
    }

    /// States from which the goal cannot be reached without another call (as the aws waiters judge, and
    /// a resource in `error` or being deleted).
    fn dead_end(self, state: &str) -> bool {
        match self {
            Goal::Running => matches!(state, "shutting-down" | "terminated" | "stopping" | "stopped"),
            Goal::Stopped => matches!(state, "pending" | "shutting-down" | "terminated"),
            Goal::Terminated => matches!(state, "pending" | "stopping"),
            Goal::VolumeAvailable => matches!(state, "deleting" | "deleted" | "error"),
            // `available` after AttachVolume answered `attaching`: the attachment failed and went away.
            Goal::VolumeInUse => matches!(state, "deleting" | "deleted" | "error" | "available"),
            Goal::VolumeDeleted => matches!(state, "error"),
            Goal::SnapshotCompleted => matches!(state, "error"),
        }
    }

    /// Whether a resource missing from the answer has reached the goal (deleted resources are purged).
    fn reached_when_gone(self) -> bool {
        matches!(self, Goal::Terminated | Goal::VolumeDeleted)
    }

    /// The error code of an unknown ID of the resource polled.
    fn not_found_code(self) -> &'static str {
        match self.resource() {
            Resource::Instance => "InvalidInstanceID.NotFound",
            Resource::Volume => "InvalidVolume.NotFound",
            Resource::Snapshot => "InvalidSnapshot.NotFound",
        }
    }

    /// The call that polls.
    fn operation(self) -> &'static str {
        match self.resource() {
            Resource::Instance => "DescribeInstances",
            Resource::Volume => "DescribeVolumes",
            Resource::Snapshot => "DescribeSnapshots",
        }
    }
}

/// A volume's state as the waits follow it: while `in-use`, its attachment's (`attaching`, `attached`,
/// `detaching`), so that attach and detach progress shows.
pub fn volume_state(volume: &Volume) -> String {
    match volume.attachments.first() {
        Some(attachment) if volume.state == "in-use" && !attachment.state.is_empty() => attachment.state.clone(),
        _ => volume.state.clone(),
    }
}

/// What one poll found for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub state: String,
    /// `StateReason.Message` (or code), or a snapshot's `StateMessage`: shown when a resource ends in a
    /// dead end.
    pub reason: String,
}

/// Where the wait stands after a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Waiting,
    Done,
    /// A resource reached a state the goal cannot follow; the message says which.
    Failed(String),
}

/// The per-resource states known so far; turns each poll into progress lines.
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
        for resource in seen {
            let Some(previous) = self.states.get_mut(&resource.id) else {
                continue;
            };
            if *previous != resource.state {
                lines.push(if previous.is_empty() {
                    format!("{} {} ({:.1} s)", resource.id, resource.state, elapsed.as_secs_f64())
                } else {
                    format!(
                        "{} {previous} → {} ({:.1} s)",
                        resource.id,
                        resource.state,
                        elapsed.as_secs_f64()
                    )
                });
                *previous = resource.state.clone();
            }
            if self.goal.dead_end(&resource.state) {
                let reason = if resource.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", resource.reason)
                };
                failed.push(format!("{} is {}{reason}", resource.id, resource.state));
            }
        }
        // Resources missing from the answer were purged: that is the end of a termination or deletion.
        if self.goal.reached_when_gone() {
            let target = self.goal.state();
            for (id, state) in self.states.iter_mut() {
                if !seen.iter().any(|s| &s.id == id) && state != target {
                    if state.is_empty() {
                        lines.push(format!("{id} {target} ({:.1} s)", elapsed.as_secs_f64()));
                    } else {
                        lines.push(format!("{id} {state} → {target} ({:.1} s)", elapsed.as_secs_f64()));
                    }
                    *state = target.into();
                }
            }
        }
        let progress = if !failed.is_empty() {
            Progress::Failed(format!(
                "Waiter for state {} failed: {}",
                self.goal.state(),
                failed.join("; ")
            ))
        } else if self.states.values().all(|s| self.goal.reached(s)) {
            Progress::Done
        } else {
            Progress::Waiting
        };
        (lines, progress)
    }

    /// The resources not yet at the goal, for the timeout message.
    fn laggards(&self) -> String {
        let mut text: Vec<String> = self
            .states
            .iter()
            .filter(|(_, state)| !self.goal.reached(state))
            .map(|(id, state)| format!("{id} ({})", if state.is_empty() { "unknown" } else { state }))
            .collect();
        text.sort();
        text.join(", ")
    }
}

/// One poll of the resources `ids`: their states as the goal follows them.
async fn poll(session: &mut Session, goal: Goal, ids: &[String]) -> Result<Result<Vec<Seen>, Status>, CliError> {
    Ok(match goal.resource() {
        Resource::Instance => {
            let request = session.request(DescribeInstancesRequest {
                instance_ids: ids.to_vec(),
                ..Default::default()
            });
            session
                .client()
                .await?
                .describe_instances(request)
                .await
                .map(|response| {
                    response
                        .into_inner()
                        .reservations
                        .into_iter()
                        .flat_map(|r| r.instances)
                        .map(|i| Seen {
                            id: i.instance_id,
                            state: i.state.map(|s| s.name).unwrap_or_default(),
                            reason: i
                                .state_reason
                                .map(|r| if r.message.is_empty() { r.code } else { r.message })
                                .unwrap_or_default(),
                        })
                        .collect()
                })
        }
        Resource::Volume => {
            let request = session.request(DescribeVolumesRequest {
                volume_ids: ids.to_vec(),
                ..Default::default()
            });
            session.client().await?.describe_volumes(request).await.map(|response| {
                response
                    .into_inner()
                    .volumes
                    .iter()
                    .map(|v| Seen {
                        id: v.volume_id.clone(),
                        state: volume_state(v),
                        reason: String::new(),
                    })
                    .collect()
            })
        }
        Resource::Snapshot => {
            let request = session.request(DescribeSnapshotsRequest {
                snapshot_ids: ids.to_vec(),
                ..Default::default()
            });
            session
                .client()
                .await?
                .describe_snapshots(request)
                .await
                .map(|response| {
                    response
                        .into_inner()
                        .snapshots
                        .into_iter()
                        .map(|s| Seen {
                            id: s.snapshot_id,
                            state: s.state,
                            reason: s.state_message,
                        })
                        .collect()
                })
        }
    })
}

/// Polls until every resource in `known` (id → state the call reported) reaches `goal`; progress goes to
/// stderr.
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
        let seen = match poll(session, goal, &ids).await? {
            Ok(seen) => seen,
            // Terminated instances and deleted volumes are purged after a while; all of them gone is the end.
            Err(status)
                if goal.reached_when_gone()
                    && crate::error::ec2_error(&status).is_some_and(|(code, _)| code == goal.not_found_code()) =>
            {
                Vec::new()
            }
            Err(status) => return Err(CliError::from_status(goal.operation(), &endpoint, &status)),
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
            id: id.into(),
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

    fn attached_volume(volume_state: &str, attachment_state: &str) -> Volume {
        Volume {
            volume_id: "vol-1".into(),
            state: volume_state.into(),
            attachments: vec![hearth_api::v1::VolumeAttachment {
                volume_id: "vol-1".into(),
                instance_id: "i-1".into(),
                state: attachment_state.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn volumes_in_use_show_their_attachment_state() {
        assert_eq!(volume_state(&attached_volume("in-use", "attaching")), "attaching");
        assert_eq!(volume_state(&attached_volume("in-use", "")), "in-use");
        assert_eq!(volume_state(&attached_volume("available", "detached")), "available");
        let creating = Volume {
            state: "creating".into(),
            ..Default::default()
        };
        assert_eq!(volume_state(&creating), "creating");
    }

    #[test]
    fn attach_waits_for_attached_and_fails_when_the_attachment_goes() {
        let mut tracker = Tracker::new(Goal::VolumeInUse, [("vol-1".into(), "attaching".into())]);
        let (lines, progress) = tracker.observe(&[seen("vol-1", "attaching")], ms(100));
        assert!(lines.is_empty());
        assert_eq!(progress, Progress::Waiting);
        let (lines, progress) = tracker.observe(&[seen("vol-1", "attached")], ms(300));
        assert_eq!(lines, vec!["vol-1 attaching → attached (0.3 s)"]);
        assert_eq!(progress, Progress::Done);
        // A volume in-use without attachment details counts as attached.
        let mut tracker = Tracker::new(Goal::VolumeInUse, [("vol-1".into(), "attaching".into())]);
        assert_eq!(tracker.observe(&[seen("vol-1", "in-use")], ms(0)).1, Progress::Done);

        let mut tracker = Tracker::new(Goal::VolumeInUse, [("vol-1".into(), "attaching".into())]);
        let (_, progress) = tracker.observe(&[seen("vol-1", "available")], ms(500));
        assert_eq!(
            progress,
            Progress::Failed("Waiter for state in-use failed: vol-1 is available".into())
        );
    }

    #[test]
    fn detach_and_create_wait_for_available() {
        let mut tracker = Tracker::new(
            Goal::VolumeAvailable,
            [
                ("vol-1".into(), "detaching".into()),
                ("vol-2".into(), "creating".into()),
            ],
        );
        let (lines, progress) = tracker.observe(&[seen("vol-1", "available"), seen("vol-2", "creating")], ms(200));
        assert_eq!(lines, vec!["vol-1 detaching → available (0.2 s)"]);
        assert_eq!(progress, Progress::Waiting);
        assert_eq!(tracker.laggards(), "vol-2 (creating)");
        let (_, progress) = tracker.observe(&[seen("vol-1", "available"), seen("vol-2", "error")], ms(400));
        assert_eq!(
            progress,
            Progress::Failed("Waiter for state available failed: vol-2 is error".into())
        );
    }

    #[test]
    fn deleted_volumes_are_done_when_gone() {
        let mut tracker = Tracker::new(Goal::VolumeDeleted, [("vol-1".into(), String::new())]);
        let (lines, progress) = tracker.observe(&[seen("vol-1", "deleting")], ms(100));
        assert_eq!(lines, vec!["vol-1 deleting (0.1 s)"]);
        assert_eq!(progress, Progress::Waiting);
        let (lines, progress) = tracker.observe(&[], ms(300));
        assert_eq!(lines, vec!["vol-1 deleting → deleted (0.3 s)"]);
        assert_eq!(progress, Progress::Done);
        // Gone before the first poll.
        let mut tracker = Tracker::new(Goal::VolumeDeleted, [("vol-2".into(), String::new())]);
        let (lines, progress) = tracker.observe(&[], ms(100));
        assert_eq!(lines, vec!["vol-2 deleted (0.1 s)"]);
        assert_eq!(progress, Progress::Done);
        // Missing instances or volumes only count for the goals that delete them.
        let mut tracker = Tracker::new(Goal::VolumeAvailable, [("vol-3".into(), "creating".into())]);
        assert_eq!(tracker.observe(&[], ms(100)), (vec![], Progress::Waiting));
    }

    #[test]
    fn a_failed_snapshot_fails_the_wait_with_its_message() {
        let mut tracker = Tracker::new(Goal::SnapshotCompleted, [("snap-1".into(), "pending".into())]);
        let failed = Seen {
            reason: "the volume's host went away".into(),
            ..seen("snap-1", "error")
        };
        let (lines, progress) = tracker.observe(&[failed], ms(700));
        assert_eq!(lines, vec!["snap-1 pending → error (0.7 s)"]);
        assert_eq!(
            progress,
            Progress::Failed("Waiter for state completed failed: snap-1 is error: the volume's host went away".into())
        );
        assert_eq!(Goal::SnapshotCompleted.operation(), "DescribeSnapshots");
        assert_eq!(Goal::VolumeDeleted.not_found_code(), "InvalidVolume.NotFound");
    }
}
