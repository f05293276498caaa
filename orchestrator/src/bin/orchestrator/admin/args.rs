//! The admin commands' arguments: connection options, subcommands, and
//! stream ids (`N` or `A-B`) expanded into lists.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::AdminError;

/// Most ids one `A-B` range may cover.
const MAX_IDS_PER_RANGE: u64 = 1_000_000;
/// Most ids one command may name, all arguments together.
const MAX_IDS_PER_COMMAND: usize = 1_000_000;

/// Connection options shared by every admin subcommand (`serve` ignores
/// them; they are listed under their own heading).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Admin commands (ignored by serve)")]
pub(crate) struct AdminArgs {
    /// Address of the orchestrator's gRPC endpoint; several replicas
    /// comma-separated (the command goes to the one that leads).
    #[arg(long, global = true, env = "ORCHESTRATOR_ADDR", default_value = "http://127.0.0.1:50051")]
    pub(crate) addr: String,
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Give up on a call after this long (e.g. "5s", "500ms").
    #[arg(
        long,
        global = true,
        env = "ORCHESTRATOR_TIMEOUT",
        default_value = "5s",
        value_parser = humantime::parse_duration
    )]
    pub(crate) timeout: Duration,
    /// Bearer token for an orchestrator with an auth file (an `admin` line).
    /// Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, global = true, env = "ORCHESTRATOR_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub(crate) token: Option<Secret>,
    /// CA certificate (PEM) to verify the orchestrator's TLS certificate;
    /// use an https:// --addr.
    #[arg(long, global = true, env = "ORCHESTRATOR_TLS_CA", value_name = "PATH")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mTLS, with --client-key; its URI SAN
    /// is urn:orchestrator:admin:<name>.
    #[arg(long, global = true, env = "ORCHESTRATOR_CLIENT_CERT", value_name = "PATH", requires = "client_key")]
    pub(crate) client_cert: Option<std::path::PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, global = true, env = "ORCHESTRATOR_CLIENT_KEY", value_name = "PATH", requires = "client_cert")]
    pub(crate) client_key: Option<std::path::PathBuf>,
}

/// A secret from the command line or the environment; its `Debug` hides
/// it.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The admin subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub(crate) enum AdminCommand {
    /// Add, remove or list streams in the catalog.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// List the workers the orchestrator knows: state (live, draining,
    /// expired, awaiting re-registration), streams held, capacity and last
    /// heartbeat. Prints once and exits.
    Workers,
    /// List current leases (who processes what, at which lease epoch).
    /// Prints once and exits.
    Assignments {
        /// Only this worker's leases.
        #[arg(long)]
        server_id: Option<String>,
    },
    /// Show cluster-wide figures: streams assigned and unassigned, workers
    /// by state, whether rebalancing is paused or held back. Prints once and
    /// exits, or with --watch refreshes until ctrl-c.
    Status {
        /// Refresh every INTERVAL (default 2s) until ctrl-c: redrawn in
        /// place on a terminal; otherwise (or with --json, one compact
        /// document per line) each reading is appended. A failed reading is
        /// shown and the watch goes on.
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = humantime::parse_duration)]
        watch: Option<std::time::Duration>,
    },
    /// Move every stream away from a worker and give it no new ones.
    ///
    /// Returns at once with the number of streams to move; they move over the
    /// worker's next heartbeats (watch them with `assignments --server-id
    /// ID`). The drain lasts while the worker's session does, even if it
    /// registers again, and ends when the worker deregisters (e.g. it is
    /// stopped cleanly) or its session expires. Draining a draining worker
    /// changes nothing.
    Drain {
        /// The worker to drain.
        server_id: String,
    },
    /// Pause or resume moves for balance (the setting is stored and
    /// survives restarts).
    #[command(subcommand)]
    Rebalancing(RebalancingCommand),
}

/// `streams …`: the stream catalog.
#[derive(Debug, Clone, clap::Subcommand)]
pub(crate) enum StreamsCommand {
    /// Add streams to the catalog; streams already there are left unchanged.
    Add {
        /// Stream ids: N or an inclusive range A-B (e.g. `1 5-9 12`).
        #[arg(required = true, value_name = "ID|A-B", allow_negative_numbers = true)]
        ids: Vec<IdArg>,
        /// Name of the stream (only with exactly one stream id).
        #[arg(long)]
        name: Option<String>,
        /// Where workers read the stream from (only with exactly one stream id).
        #[arg(long)]
        source_url: Option<String>,
    },
    /// Remove streams from the catalog; their owners are told to stop.
    Remove {
        /// Stream ids: N or an inclusive range A-B (e.g. `1 5-9 12`).
        #[arg(required = true, value_name = "ID|A-B", allow_negative_numbers = true)]
        ids: Vec<IdArg>,
    },
    /// List every stream with its owner and state.
    List {
        /// Streams asked for per call (0 lets the server choose; at most 10000).
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
    },
}

/// `rebalancing …`: pause or resume moves for balance.
#[derive(Debug, Clone, clap::Subcommand)]
pub(crate) enum RebalancingCommand {
    /// Stop moving streams for balance until `rebalancing resume`.
    ///
    /// Coverage still wins: unassigned streams and the streams of expired
    /// workers are still placed, drains and removals still revoke. The pause
    /// lasts until resumed, across orchestrator restarts.
    Pause {
        /// Why, written to the orchestrator's log (at most 1024 bytes).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Move streams for balance again: the orchestrator revokes and grants
    /// over the next heartbeats until the load is balanced.
    Resume,
}

/// One stream-id argument: a single id `N` or an inclusive range `A-B`,
/// with `1 <= A <= B` and at most 1,000,000 ids in a range.
///
/// Parsed from the command line through [`FromStr`]; build one in code with
/// `"5-9".parse::<IdArg>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdArg {
    first: i64,
    last: i64,
}

impl IdArg {
    /// How many ids the argument covers (at least 1).
    pub(crate) fn len(&self) -> u64 {
        self.last.abs_diff(self.first) + 1
    }
}

impl fmt::Display for IdArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}-{}", self.first, self.last) }
    }
}

impl FromStr for IdArg {
    type Err = AdminError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let one = |part: &str| -> Result<i64, AdminError> {
            let id: i64 = part.trim().parse().map_err(|e| {
                AdminError::Usage(format!(
                    "invalid stream id {text:?}: {e} (expected a stream id N >= 1 or an inclusive range A-B)"
                ))
            })?;
            if id < 1 {
                return Err(AdminError::Usage(format!("invalid stream id {text:?}: stream ids start at 1")));
            }
            Ok(id)
        };
        if text.starts_with('-') {
            return Err(AdminError::Usage(format!("invalid stream id {text:?}: stream ids start at 1")));
        }
        let Some((a, b)) = text.split_once('-') else {
            let id = one(text)?;
            return Ok(IdArg { first: id, last: id });
        };
        let (first, last) = (one(a)?, one(b)?);
        if first > last {
            return Err(AdminError::Usage(format!(
                "invalid stream id range {text:?}: the start {first} is greater than the end {last}"
            )));
        }
        let arg = IdArg { first, last };
        if arg.len() > MAX_IDS_PER_RANGE {
            return Err(AdminError::Usage(format!(
                "invalid stream id range {text:?}: it covers {} ids, at most {MAX_IDS_PER_RANGE} per range",
                arg.len()
            )));
        }
        Ok(arg)
    }
}

/// Expands id arguments into the list of stream ids, in order, each id once
/// (the first occurrence wins).
///
/// Fails with [`AdminError::Usage`] when the arguments name more than
/// 1,000,000 distinct ids or none at all.
pub(crate) fn parse_ids(args: &[IdArg]) -> Result<Vec<i64>, AdminError> {
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for arg in args {
        for id in arg.first..=arg.last {
            if seen.insert(id) {
                ids.push(id);
                if ids.len() > MAX_IDS_PER_COMMAND {
                    return Err(AdminError::Usage(format!(
                        "too many stream ids: more than {MAX_IDS_PER_COMMAND} in one command; split it into several"
                    )));
                }
            }
        }
    }
    if ids.is_empty() {
        return Err(AdminError::Usage("no stream ids given: name at least one stream id N or range A-B".to_owned()));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: AdminCommand,
    }

    fn ids(args: &[&str]) -> Result<Vec<i64>, AdminError> {
        let parsed = args.iter().map(|a| a.parse::<IdArg>()).collect::<Result<Vec<_>, _>>()?;
        parse_ids(&parsed)
    }

    fn usage(arg: &str) -> String {
        match arg.parse::<IdArg>() {
            Err(AdminError::Usage(msg)) => msg,
            other => panic!("{arg:?} should be a usage error, got {other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn clap_parses_ids_and_options() {
        let cli = Cli::try_parse_from(["orchestrator", "streams", "add", "1", "5-9", "12"]).expect("parses");
        let AdminCommand::Streams(StreamsCommand::Add { ids, name, .. }) = cli.command else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(parse_ids(&ids).unwrap(), vec![1, 5, 6, 7, 8, 9, 12]);
        assert_eq!(name, None);

        let cli = Cli::try_parse_from([
            "orchestrator",
            "--json",
            "--timeout",
            "500ms",
            "streams",
            "add",
            "7",
            "--name",
            "cam",
        ])
        .expect("parses");
        assert!(cli.admin.json);
        assert_eq!(cli.admin.timeout, Duration::from_millis(500));

        // Global options also after the subcommand; negative ids reach our parser.
        let cli = Cli::try_parse_from(["orchestrator", "workers", "--addr", "http://h:1"]).expect("parses");
        assert_eq!(cli.admin.addr, "http://h:1");
        let err = Cli::try_parse_from(["orchestrator", "streams", "remove", "-3"]).unwrap_err();
        assert!(err.to_string().contains("stream ids start at 1"), "{err}");
        assert!(Cli::try_parse_from(["orchestrator", "streams", "add"]).is_err());
    }

    #[test]
    fn ids_single_ranges_and_dedupe() {
        assert_eq!(ids(&["5"]).unwrap(), vec![5]);
        assert_eq!(ids(&["3-5"]).unwrap(), vec![3, 4, 5]);
        assert_eq!(ids(&["7-7"]).unwrap(), vec![7]);
        assert_eq!(ids(&["9", "1-3", "2", "9", "3-4"]).unwrap(), vec![9, 1, 2, 3, 4]);
        assert_eq!(ids(&[" 12 "]).unwrap(), vec![12]);
        let arg: IdArg = "5-9".parse().unwrap();
        assert_eq!((arg.first, arg.last, arg.len()), (5, 9, 5));
        assert_eq!(arg.to_string(), "5-9");
        assert_eq!("4".parse::<IdArg>().unwrap().to_string(), "4");
    }

    #[test]
    fn ids_errors() {
        assert!(usage("0").contains("start at 1"));
        assert!(usage("-3").contains("start at 1"));
        assert!(usage("0-4").contains("start at 1"));
        let msg = usage("9-2");
        assert!(msg.contains("\"9-2\"") && msg.contains("greater than"), "{msg}");
        let msg = usage("abc");
        assert!(msg.contains("\"abc\"") && msg.contains("range A-B"), "{msg}");
        assert!(usage("").contains("invalid stream id"));
        assert!(usage("1-").contains("invalid stream id"));
        assert!(usage("99999999999999999999").contains("too large"));
        let msg = usage("1-1000001");
        assert!(msg.contains("1000001 ids") && msg.contains("at most 1000000"), "{msg}");
        assert_eq!(ids(&["1-1000000"]).unwrap().len(), 1_000_000);

        let err = ids(&["1-1000000", "2000000"]).unwrap_err();
        assert!(err.to_string().starts_with("too many stream ids"), "{err}");
        let err = parse_ids(&[]).unwrap_err();
        assert!(err.to_string().starts_with("no stream ids"), "{err}");
    }
}
