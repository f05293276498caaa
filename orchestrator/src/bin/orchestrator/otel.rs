//! OpenTelemetry trace export (`--otlp-endpoint`), compiled in only with the
//! `otel` feature: spans go over OTLP/gRPC to a collector in batches. With
//! an endpoint, the server opens a `grpc` span (the method's path) around
//! every call (`ServerConfig::trace_requests`); the spans the code opens
//! inside it (`register`, with the server_id) are its children.

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// A trace layer for subscribers of type `S`, if any.
pub(crate) type TraceLayer<S> = Option<Box<dyn Layer<S> + Send + Sync>>;

/// What must live until exit: dropping it flushes the spans not yet sent.
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// An endpoint given to a build without export.
    #[cfg(not(feature = "otel"))]
    ignored: Option<String>,
}

#[cfg(feature = "otel")]
impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing traces to the OTLP collector: {e}");
        }
    }
}

/// The OTLP layer for `endpoint` (none without one).
///
/// # Errors
///
/// The endpoint cannot be used, or (without the `otel` feature) the binary
/// cannot export at all.
#[cfg(feature = "otel")]
pub(crate) fn layer<S>(endpoint: Option<&str>, sample_ratio: f64) -> Result<(TraceLayer<S>, Telemetry), String>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    let Some(endpoint) = endpoint else {
        return Ok((None, Telemetry::default()));
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("orchestrator")
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .with_sampler(opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(sample_ratio))
        .build();
    let tracer = provider.tracer("orchestrator");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).boxed();
    Ok((Some(layer), Telemetry { provider: Some(provider) }))
}

/// Without the `otel` feature: no layer. An endpoint (often set for a
/// whole environment as `OTEL_EXPORTER_OTLP_ENDPOINT`) is not an error: it
/// is ignored, and the warning to log says how to get export.
///
/// # Errors
///
/// None in this build.
#[cfg(not(feature = "otel"))]
pub(crate) fn layer<S>(endpoint: Option<&str>, _sample_ratio: f64) -> Result<(TraceLayer<S>, Telemetry), String>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    Ok((None, Telemetry { ignored: endpoint.map(str::to_owned) }))
}

/// Whether traces are exported (the server then opens a span per call).
pub(crate) fn exporting(telemetry: &Telemetry) -> bool {
    #[cfg(feature = "otel")]
    return telemetry.provider.is_some();
    #[cfg(not(feature = "otel"))]
    {
        if let Some(endpoint) = &telemetry.ignored {
            tracing::warn!(
                "--otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT {endpoint} ignored: this orchestrator was built without \
                 trace export; build it with `cargo build --release -p orchestrator --features otel`"
            );
        }
        false
    }
}
