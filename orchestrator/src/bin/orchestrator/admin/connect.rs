//! Connecting to the orchestrator's admin service.

use orchestrator_proto::v1::admin_service_client::AdminServiceClient;
use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::AdminArgs;
use super::error::{AdminError, error_chain, root_cause};

/// Largest response accepted (a page of 10,000 streams with long URLs is
/// bigger than tonic's 4 MiB default).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

pub(super) fn rpc_error(addr: &str, rpc: &'static str) -> impl Fn(tonic::Status) -> AdminError {
    move |status| AdminError::Rpc { addr: addr.to_owned(), rpc, status: Box::new(status) }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub(super) struct Token(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// The admin client, with the token interceptor.
pub(super) type Client = AdminServiceClient<InterceptedService<Channel, Token>>;

fn read_pem(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, AdminError> {
    let pem = std::fs::read(path).map_err(|e| AdminError::Usage(format!("{flag} {}: {e}", path.display())))?;
    if !pem.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(AdminError::Usage(format!("{flag} {}: not a PEM file (no -----BEGIN line)", path.display())));
    }
    Ok(pem)
}

/// Connects to the orchestrator that leads: `args.addr` may name several
/// replicas (comma-separated); each is tried in turn, and a replica that
/// answers NOT_LEADER with the leader's address sends the command there.
pub(super) async fn connect(args: &AdminArgs) -> Result<Client, AdminError> {
    let mut queue: std::collections::VecDeque<String> =
        args.addr.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
    if queue.is_empty() {
        return Err(AdminError::InvalidAddr { addr: args.addr.clone(), why: "no address given".to_owned() });
    }
    let single = queue.len() == 1;
    let mut hops = 0;
    let mut last = None;
    while let Some(addr) = queue.pop_front() {
        let mut client = match connect_one(args, &addr).await {
            Ok(c) => c,
            Err(e) if single || matches!(e, AdminError::InvalidAddr { .. } | AdminError::Usage(_)) => return Err(e),
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        // Which replica leads: one cheap call. Any other answer (an error
        // included) is left to the command itself to report.
        match client.get_cluster_status(orchestrator_proto::v1::GetClusterStatusRequest {}).await {
            Err(status) if is_not_leader(&status) => {
                let hint = status.metadata().get(orchestrator_proto::LEADER_HEADER).and_then(|v| v.to_str().ok());
                match hint {
                    Some(leader) if hops < 3 && leader != addr => {
                        hops += 1;
                        queue.push_front(leader.to_owned());
                    }
                    _ => {}
                }
                last = Some(rpc_error(&addr, "GetClusterStatus")(status));
            }
            _ => return Ok(client),
        }
    }
    Err(last
        .unwrap_or_else(|| AdminError::Unreachable { addr: args.addr.clone(), cause: "no replica answered".into() }))
}

fn is_not_leader(status: &tonic::Status) -> bool {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().is_some_and(|i| i.reason == orchestrator_proto::reason::NOT_LEADER)
}

/// Connects to `addr` within `args.timeout`.
async fn connect_one(args: &AdminArgs, addr: &str) -> Result<Client, AdminError> {
    let invalid = |why: String| AdminError::InvalidAddr { addr: addr.to_owned(), why };
    let lower = addr.to_ascii_lowercase();
    let https = lower.starts_with("https://");
    if !https && !lower.starts_with("http://") {
        return Err(invalid("the address must start with http:// or https://".to_owned()));
    }
    let token = match args.token.as_ref().map(|t| t.0.trim()) {
        None | Some("") => None,
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(AdminError::Usage("--token must be printable ASCII without spaces".to_owned()));
        }
        Some(t) => {
            let mut value: MetadataValue<Ascii> = format!("Bearer {t}")
                .parse()
                .map_err(|_| AdminError::Usage("--token must be printable ASCII without spaces".to_owned()))?;
            value.set_sensitive(true);
            Some(value)
        }
    };
    let mut endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|e| invalid(error_chain(&e)))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    match (&args.tls_ca, https) {
        (Some(ca), true) => {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--tls-ca", ca)?));
            if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
                tls =
                    tls.identity(Identity::from_pem(read_pem("--client-cert", cert)?, read_pem("--client-key", key)?));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| AdminError::Usage(format!("TLS: {}", error_chain(&e))))?;
        }
        (None, true) => {
            return Err(AdminError::Usage(
                "an https:// --addr needs --tls-ca PATH (the CA that signed the orchestrator's certificate)".to_owned(),
            ));
        }
        (Some(_), false) => {
            return Err(invalid("--tls-ca is given: use an https:// address".to_owned()));
        }
        (None, false) if args.client_cert.is_some() => {
            return Err(invalid("--client-cert needs TLS: use an https:// address and --tls-ca".to_owned()));
        }
        (None, false) => {}
    }
    let channel = match tokio::time::timeout(args.timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            return Err(AdminError::Unreachable { addr: addr.to_owned(), cause: root_cause(&e) });
        }
        Err(_) => {
            return Err(AdminError::Unreachable {
                addr: addr.to_owned(),
                cause: format!("no connection within {}", humantime::format_duration(args.timeout)),
            });
        }
    };
    Ok(AdminServiceClient::with_interceptor(channel, Token(token)).max_decoding_message_size(MAX_RESPONSE_BYTES))
}
