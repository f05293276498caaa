//! The protobuf codec of the generated clients and servers: prost's, except
//! that a request message that does not decode is the caller's mistake.
//!
//! tonic answers a message that fails to decode with INTERNAL (its reading
//! of the gRPC status-code guide, which is about a *response* the client
//! cannot parse). The contract promises that bad input never gets INTERNAL:
//! a server that cannot decode a request (invalid UTF-8 in a string, a wrong
//! wire type, a truncated field) answers INVALID_ARGUMENT with prost's
//! message, which names the message and the field
//! (`malformed RegisterRequest: failed to decode Protobuf message:
//! RegisterRequest.server_id: invalid string value: data is not UTF-8
//! encoded`). A client that cannot decode a response still gets INTERNAL.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// The codec named by `codec_path` in `build.rs`.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; see the module docs for the status of a failure.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U> {
    _pd: PhantomData<U>,
}

/// `HeartbeatRequest` for `orchestrator_proto::v1::HeartbeatRequest`.
fn short_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The status for a message of type `U` that failed to decode.
pub(crate) fn decode_error<U>(error: &prost::DecodeError) -> Status {
    let name = short_name::<U>();
    if name.ends_with("Request") {
        Status::invalid_argument(format!("malformed {name}: {error}"))
    } else {
        Status::internal(format!("malformed {name}: {error}"))
    }
}

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| decode_error::<U>(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    #[test]
    fn a_request_that_does_not_decode_is_invalid_argument_naming_the_field() {
        // Field 1 (server_id), length-delimited, 2 bytes that are not UTF-8.
        let bytes = [0x0a, 0x02, 0xff, 0xfe];
        let error = v1::RegisterRequest::decode(&bytes[..]).unwrap_err();
        let status = decode_error::<v1::RegisterRequest>(&error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("RegisterRequest.server_id"), "{}", status.message());
    }

    #[test]
    fn a_response_that_does_not_decode_stays_internal() {
        let error = v1::RegisterResponse::decode(&[0x0a, 0x05, 0x01][..]).unwrap_err();
        let status = decode_error::<v1::RegisterResponse>(&error);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().starts_with("malformed RegisterResponse"), "{}", status.message());
    }
}
