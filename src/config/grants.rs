//! The grant store's settings: where its journal lives (or none), how it syncs, how
//! long grants are kept, the sweeper, and who may call the admin RPCs.

use std::{path::PathBuf, time::Duration};

use chrono::TimeDelta;

use super::{caller_list, duration, options::options};
use crate::grants::{JournalOptions, StoreOptions};

options! {
    /// The grant store, its journal and sweeper, and the admin callers.
    #[command(next_help_heading = "Grants")]
    pub struct GrantArgs {
        /// Directory of the grant journal [default: ./data].
        #[arg(long, env = "STEPGATE_STATE_DIR", value_name = "DIR")]
        pub state_dir: PathBuf,
        /// Keep grants in memory only, with no journal.
        #[arg(long, env = "STEPGATE_EPHEMERAL", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        pub ephemeral: bool,
        /// How often due grants are expired [default: 1s].
        #[arg(long, env = "STEPGATE_SWEEP_INTERVAL", value_name = "DURATION")]
        pub sweep_interval: String,
        /// Caller identities allowed to call Approve, Reject, Revoke and ConfirmRevocation
        /// [default: any caller that reaches the listener, with a warning].
        #[arg(
            long,
            env = "STEPGATE_ADMIN_CALLERS",
            value_name = "ID[,ID...]",
            value_delimiter = ','
        )]
        pub admin_callers: Vec<String>,
        /// Approval deadline of a pending grant when policy sets none [default: 1h].
        #[arg(long, env = "STEPGATE_APPROVAL_TIMEOUT", value_name = "DURATION")]
        pub approval_timeout: String,
        /// How long ended grants are kept for audit [default: 24h].
        #[arg(long, env = "STEPGATE_GRANT_RETENTION", value_name = "DURATION")]
        pub grant_retention: String,
        /// How long after a grant ends its revocation must be confirmed before it is
        /// reported overdue [default: 5m].
        #[arg(
            long,
            env = "STEPGATE_REVOCATION_CONFIRM_DEADLINE",
            value_name = "DURATION"
        )]
        pub revocation_confirm_deadline: String,
        /// fdatasync the journal before acknowledging a mutation [default: true].
        #[arg(long, env = "STEPGATE_JOURNAL_FSYNC", value_name = "BOOL")]
        pub journal_fsync: bool,
        /// Let concurrent mutations share one journal write and sync [default: true].
        #[arg(long, env = "STEPGATE_JOURNAL_GROUP_COMMIT", value_name = "BOOL")]
        pub journal_group_commit: bool,
    }
}

/// The grant store's configuration.
#[derive(Debug, Clone)]
pub struct GrantsConfig {
    /// Journal directory and retention; `state_dir: None` is ephemeral.
    pub store: StoreOptions,
    /// How often due grants are expired.
    pub sweep_interval: Duration,
    /// Approval deadline when policy sets no `approval_timeout_seconds`.
    pub approval_timeout: Duration,
}

/// What `stepgate serve` runs with when nothing is set, as documented; where the grant
/// store's own defaults (for embedding and tests) differ, these win: a journal under
/// `./data` (`StoreOptions` has none) with group commit on (`JournalOptions` has it off).
impl Default for GrantsConfig {
    fn default() -> Self {
        Self {
            store: StoreOptions {
                state_dir: Some(PathBuf::from("./data")),
                journal: JournalOptions {
                    group_commit: true,
                    ..JournalOptions::default()
                },
                ..StoreOptions::default()
            },
            sweep_interval: Duration::from_secs(1),
            approval_timeout: Duration::from_secs(3600),
        }
    }
}

/// The validated grant settings and the admin callers (`None`: anyone who reaches the
/// listener).
pub(super) struct Grants {
    pub grants: GrantsConfig,
    pub admin_callers: Option<Vec<String>>,
}

impl GrantArgs {
    /// The grant settings, each problem pushed to `problems`.
    pub(super) fn resolve(self, problems: &mut Vec<String>) -> Grants {
        let defaults = GrantsConfig::default();
        let store_defaults = &defaults.store;
        let sweep_interval = duration(
            problems,
            "sweep_interval",
            self.sweep_interval,
            defaults.sweep_interval,
        );
        let approval_timeout = duration(
            problems,
            "approval_timeout",
            self.approval_timeout,
            defaults.approval_timeout,
        );
        let retention = duration(
            problems,
            "grant_retention",
            self.grant_retention,
            store_defaults.retention.to_std().unwrap_or_default(),
        );
        let confirm_deadline = duration(
            problems,
            "revocation_confirm_deadline",
            self.revocation_confirm_deadline,
            store_defaults
                .revocation_confirm_deadline
                .to_std()
                .unwrap_or_default(),
        );
        let admin_callers = caller_list("admin_callers", self.admin_callers, problems);
        let ephemeral = self.ephemeral.unwrap_or(false);
        if ephemeral && self.state_dir.is_some() {
            problems.push("state_dir: cannot be set together with ephemeral".into());
        }
        let state_dir = if ephemeral {
            None
        } else {
            self.state_dir.or(store_defaults.state_dir.clone())
        };
        let journal = JournalOptions {
            fsync: self.journal_fsync.unwrap_or(store_defaults.journal.fsync),
            group_commit: self
                .journal_group_commit
                .unwrap_or(store_defaults.journal.group_commit),
            ..store_defaults.journal.clone()
        };
        Grants {
            grants: GrantsConfig {
                store: StoreOptions {
                    state_dir,
                    retention: to_delta(retention),
                    revocation_confirm_deadline: to_delta(confirm_deadline),
                    journal,
                    ..store_defaults.clone()
                },
                sweep_interval,
                approval_timeout,
            },
            admin_callers,
        }
    }
}

fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{merge, merge_err};
    use super::*;

    #[test]
    fn grant_store_settings_and_ephemeral() {
        let config = merge(&[], "");
        assert_eq!(config.grants.store.state_dir, Some(PathBuf::from("./data")));
        assert_eq!(config.grants.sweep_interval, Duration::from_secs(1));
        assert!(config.grants.store.journal.fsync);
        assert!(config.grants.store.journal.group_commit);
        assert_eq!(config.admin_callers, None);

        let config = merge(
            &[
                "--ephemeral",
                "--sweep-interval",
                "500ms",
                "--admin-callers",
                "uds:uid=0, spiffe://x ",
            ],
            "",
        );
        assert_eq!(config.grants.store.state_dir, None);
        assert_eq!(config.grants.sweep_interval, Duration::from_millis(500));
        assert_eq!(
            config.admin_callers,
            Some(vec!["uds:uid=0".to_string(), "spiffe://x".to_string()])
        );

        let config = merge(
            &[],
            "admin_callers = [\"uds:uid=1000\"]\ngrant_retention = \"1h\"\n",
        );
        assert_eq!(config.admin_callers, Some(vec!["uds:uid=1000".to_string()]));
        assert_eq!(config.grants.store.retention, TimeDelta::hours(1));

        let err = merge_err(
            &["--ephemeral", "--state-dir", "/x"],
            "admin_callers = []\n",
        );
        assert_eq!(err.0.len(), 2, "{err}");
    }
}
