use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{Retry, RetryAction};
use crate::BoxError;
use crate::grpc::{GrpcClassifier, grpc_timeout};

/// Decides, from the result of one attempt, whether a tower
/// [`RetryService`] tries again.
pub trait ClassifyRetry<T, E> {
    /// `None` if the attempt succeeded; otherwise what to do about it.
    fn retry_action(&self, result: &Result<T, E>) -> Option<RetryAction>;
}

/// A tower layer that retries gRPC (HTTP/2) calls with a [`Retry`].
///
/// tower's own retry cannot wrap a tonic `Channel` because the request body
/// is a stream and not `Clone`; this layer buffers the body of each request
/// (unary requests are small) and sends a fresh copy per attempt. A
/// `grpc-timeout` header on the request is the caller's deadline: no retry
/// waits past it. Use it only for idempotent calls (the orchestrator's
/// mutating calls carry a `request_id` for this).
///
/// Put it outside a [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)
/// so that every attempt passes the breaker and a refusal ends the retries:
///
/// ```no_run
/// use resilience::{grpc::GrpcClassifier, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
/// use resilience::{Retry, RetryConfig, RetryLayer};
/// use tower::ServiceBuilder;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
/// let service = ServiceBuilder::new()
///     .layer(RetryLayer::new(Retry::new(RetryConfig::default())))
///     .layer(CircuitBreakerLayer::new(breaker).with_classifier(GrpcClassifier))
///     .service(channel);
/// // let mut client = SomeGeneratedClient::new(service);
/// # let _ = service; Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RetryLayer<C = GrpcClassifier> {
    retry: Retry,
    classifier: C,
}

impl RetryLayer {
    /// A layer that retries with `retry`, classifying by gRPC status.
    pub fn new(retry: Retry) -> Self {
        Self { retry, classifier: GrpcClassifier }
    }
}

impl<C> RetryLayer<C> {
    /// The same layer with another classifier.
    pub fn with_classifier<C2>(self, classifier: C2) -> RetryLayer<C2> {
        RetryLayer { retry: self.retry, classifier }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService { inner, retry: self.retry.clone(), classifier: self.classifier.clone() }
    }
}

/// The service made by [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct RetryService<S, C = GrpcClassifier> {
    inner: S,
    retry: Retry,
    classifier: C,
}

/// The response future of [`RetryService`].
pub struct ResponseFuture<T> {
    inner: Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>,
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> std::fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, C, ResBody> Service<http::Request<tonic::body::Body>> for RetryService<S, C>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    C: ClassifyRetry<http::Response<ResBody>, S::Error> + Clone + Send + Sync + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // Take the service that was made ready; leave a clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let retry = self.retry.clone();
        let classifier = self.classifier.clone();
        let future = async move {
            let deadline = grpc_timeout(request.headers()).and_then(|timeout| Instant::now().checked_add(timeout));
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.map_err(BoxError::from)?.to_bytes();
            let mut backoff = None;
            let mut attempt = 1;
            let mut ready = true;
            loop {
                if !ready {
                    poll_fn(|cx| inner.poll_ready(cx)).await.map_err(Into::into)?;
                }
                ready = false;
                retry.inner.attempts.increment();
                let request =
                    http::Request::from_parts(parts.clone(), tonic::body::Body::new(Full::new(bytes.clone())));
                let result = inner.call(request).await;
                let Some(action) = classifier.retry_action(&result) else {
                    if let Some(budget) = &retry.inner.budget {
                        budget.on_success();
                    }
                    return result.map_err(Into::into);
                };
                let backoff = backoff.get_or_insert_with(|| retry.new_backoff());
                match retry.next_wait(action, attempt, backoff, deadline) {
                    Some(wait) => {
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => return result.map_err(Into::into),
                }
            }
        };
        ResponseFuture { inner: Box::pin(future) }
    }
}
