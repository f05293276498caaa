use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::{CallError, CircuitBreaker, Outcome, ResponseFuture};
use crate::BoxError;

/// Decides how a response counts for a breaker wrapped around a service, and
/// which error a caller sees when the breaker refuses or times out a call.
///
/// [`AnyError`] counts every `Err` as a failure; the gRPC classifier
/// (`resilience::grpc::GrpcClassifier`, feature `grpc`) reads the gRPC
/// status of the response and answers refusals with `UNAVAILABLE`.
pub trait ClassifyResponse<T, E> {
    /// How the call ended for the breaker.
    fn classify(&self, result: &Result<T, E>) -> Outcome;

    /// The error returned for a call the breaker refused.
    fn rejected_error(&self, error: CallError<Infallible>) -> BoxError {
        Box::new(error)
    }

    /// The error returned for a call that exceeded the breaker's timeout.
    fn timeout_error(&self, timeout: Duration) -> BoxError {
        Box::new(CallError::<Infallible>::Timeout { timeout })
    }
}

/// Counts every `Err` as a failure and every `Ok` as a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyError;

impl<T, E> ClassifyResponse<T, E> for AnyError {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        if result.is_ok() { Outcome::Success } else { Outcome::Failure }
    }
}

/// A tower layer that puts a [`CircuitBreaker`] in front of a service.
///
/// All services made by one layer share its breaker. A refused call is
/// answered at once with the classifier's
/// [`rejected_error`](ClassifyResponse::rejected_error) and never reaches the
/// inner service; `poll_ready` only waits for the inner service, so that
/// clients which turn readiness errors into opaque statuses (tonic does) see
/// the refusal as a normal error.
///
/// ```
/// use resilience::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), resilience::BoxError> {
/// let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
/// let service = CircuitBreakerLayer::new(breaker.clone())
///     .layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x + 1) }));
/// assert_eq!(service.oneshot(1).await?, 2);
/// assert_eq!(breaker.stats().successful_calls, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = AnyError> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer whose services share `breaker` and count every error as a
    /// failure.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self { breaker, classifier: AnyError }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// The same layer with another classifier.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer { breaker: self.breaker, classifier }
    }

    /// The shared breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService { inner, breaker: self.breaker.clone(), classifier: self.classifier.clone() }
    }
}

/// The service made by [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C = AnyError> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C> CircuitBreakerService<S, C> {
    /// The shared breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: ClassifyResponse<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Ok(permit) => {
                let timeout = self.breaker.inner.config.timeout;
                ResponseFuture::running(self.inner.call(request), timeout, permit, self.classifier.clone())
            }
            Err(rejected) => ResponseFuture::rejected(self.classifier.rejected_error(rejected)),
        }
    }
}
