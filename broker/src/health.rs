//! `grpc.health.v1.Health`: SERVING while the secure store answers, NOT_SERVING while it does
//! not, for the whole server (`""`) and for `therappai.broker.v1.Broker` alike.
//!
//! The store's availability is what [`Metrics`] learns from every store call (a failing call
//! flips it, the next call that answers flips it back); this module only follows it. A store
//! that is down but not called stays SERVING until a call finds out: the broker does not poll
//! the store (it is touched only on login, rotation, start and logout).
//!
//! The health service answers any peer without an `[[allow]]` rule: it reveals nothing but
//! whether the broker can serve. It is served by the same server on the same socket as the
//! broker, so connection limits there apply to it too.

use crate::metrics::Metrics;
use therappai_broker_proto::v1::broker_server::BrokerServer;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The service names the health service reports on: the whole server and the broker API.
pub fn service_names() -> [&'static str; 2] {
    [
        "",
        <BrokerServer<crate::service::BrokerService> as NamedService>::NAME,
    ]
}

/// The health service, with its status set from the store's availability now and kept in
/// step with it by a task that ends when `metrics` is dropped.
pub async fn service(metrics: &Metrics) -> HealthServer<HealthService> {
    HealthServer::new(HealthService::from_health_reporter(follow(metrics).await))
}

async fn follow(metrics: &Metrics) -> HealthReporter {
    let (reporter, _) = tonic_health::server::health_reporter();
    let mut availability = metrics.store_availability();
    let available = *availability.borrow_and_update();
    report(&reporter, available).await;
    let follower = reporter.clone();
    tokio::spawn(async move {
        while availability.changed().await.is_ok() {
            let available = *availability.borrow_and_update();
            if available {
                tracing::info!("the secure store answers again: health is SERVING");
            } else {
                tracing::warn!(
                    "the secure store is unavailable: health is NOT_SERVING until a store call succeeds"
                );
            }
            report(&follower, available).await;
        }
    });
    reporter
}

async fn report(reporter: &HealthReporter, store_available: bool) {
    let status = if store_available {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in service_names() {
        reporter.set_service_status(name, status).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Op;
    use tokio_stream::StreamExt;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_server::Health;

    fn request(service: &str) -> tonic::Request<HealthCheckRequest> {
        tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        })
    }

    #[tokio::test]
    async fn serving_until_the_store_fails_and_again_once_it_answers() {
        let metrics = Metrics::default();
        let health = HealthService::from_health_reporter(follow(&metrics).await);
        for name in service_names() {
            let status = health.check(request(name)).await.expect("known service");
            assert_eq!(status.get_ref().status(), Wire::Serving, "{name:?}");
        }
        let mut watch = health
            .watch(request("therappai.broker.v1.Broker"))
            .await
            .expect("watch")
            .into_inner();
        let mut next = async || watch.next().await.expect("an update").expect("ok").status();
        assert_eq!(next().await, Wire::Serving);

        // A corrupt entry is the store answering: still serving.
        metrics.store_failed(&Op::Load("a".into()), false);
        metrics.store_failed(&Op::Save("a".into()), true);
        assert_eq!(next().await, Wire::NotServing);
        let overall = health.check(request("")).await.expect("overall");
        assert_eq!(overall.get_ref().status(), Wire::NotServing);
        metrics.store_answered();
        assert_eq!(next().await, Wire::Serving);
    }

    #[tokio::test]
    async fn an_unknown_service_is_not_found() {
        let health = HealthService::from_health_reporter(follow(&Metrics::default()).await);
        let status = health.check(request("no.such.Service")).await;
        assert_eq!(status.expect_err("unknown").code(), tonic::Code::NotFound);
    }
}
