//! Connecting to the orchestrator's admin service.

use orchestrator_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::{Channel, Endpoint};

use super::AdminArgs;
use super::error::{AdminError, error_chain, root_cause};

/// Largest response accepted (a page of 10,000 streams with long URLs is
/// bigger than tonic's 4 MiB default).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

pub(super) fn rpc_error(addr: &str, rpc: &'static str) -> impl Fn(tonic::Status) -> AdminError {
    move |status| AdminError::Rpc { addr: addr.to_owned(), rpc, status: Box::new(status) }
}

/// Connects to `args.addr` within `args.timeout`.
pub(super) async fn connect(args: &AdminArgs) -> Result<AdminServiceClient<Channel>, AdminError> {
    let addr = args.addr.as_str();
    let invalid = |why: String| AdminError::InvalidAddr { addr: addr.to_owned(), why };
    let lower = addr.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(invalid("https is not supported (this build has no TLS); use http://".to_owned()));
    }
    if !lower.starts_with("http://") {
        return Err(invalid("the address must start with http://".to_owned()));
    }
    let endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|e| invalid(error_chain(&e)))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
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
    Ok(AdminServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}
