use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{ClassifyResponse, OwnedPermit};
use crate::BoxError;

pin_project! {
    /// A future bounded by an optional timeout that costs nothing when the
    /// inner future completes on its first poll: the timer is armed only
    /// when the inner future first returns `Pending`, so the limit counts
    /// from the call's first suspension point. (A timer cannot interrupt the
    /// synchronous part of a poll anyway.)
    pub(crate) struct Timed<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Option<Duration>,
    }
}

impl<F> Timed<F> {
    pub(crate) fn new(inner: F, timeout: Option<Duration>) -> Self {
        Self { inner, sleep: None, timeout }
    }
}

impl<F: Future> Future for Timed<F> {
    /// `Err` carries the limit that was exceeded.
    type Output = Result<F::Output, Duration>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(value) = this.inner.poll(cx) {
            return Poll::Ready(Ok(value));
        }
        let Some(timeout) = *this.timeout else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(timeout)));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| Err(timeout)),
            None => Poll::Pending,
        }
    }
}

pin_project! {
    /// The response future of [`CircuitBreakerService`](super::CircuitBreakerService).
    #[project = Proj]
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Rejected { error: Option<BoxError> },
        Running {
            #[pin]
            inner: Timed<F>,
            permit: Option<OwnedPermit>,
            classifier: C,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn rejected(error: BoxError) -> Self {
        Self { state: State::Rejected { error: Some(error) } }
    }

    pub(crate) fn running(inner: F, timeout: Option<Duration>, permit: OwnedPermit, classifier: C) -> Self {
        Self { state: State::Running { inner: Timed::new(inner, timeout), permit: Some(permit), classifier } }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: ClassifyResponse<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { error } => {
                Poll::Ready(Err(error.take().unwrap_or_else(|| "response future polled after completion".into())))
            }
            StateProj::Running { inner, permit, classifier } => {
                let result = ready!(inner.poll(cx));
                let Some(permit) = permit.take() else {
                    return Poll::Ready(Err("response future polled after completion".into()));
                };
                match result {
                    Ok(result) => {
                        permit.record(classifier.classify(&result));
                        Poll::Ready(result.map_err(Into::into))
                    }
                    Err(timeout) => {
                        permit.record_timeout();
                        Poll::Ready(Err(classifier.timeout_error(timeout)))
                    }
                }
            }
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
