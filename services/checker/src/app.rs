//! Wiring: configuration → admin server, producer, scheduler → run until stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::admin::{self, Health};
use common::kafka;
use rdkafka::producer::Producer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::schedule::Scheduler;

/// The checker, built and listening, not yet probing.
pub struct App {
    config: Config,
    metrics: Metrics,
    health: Arc<Health>,
    publisher: Publisher,
    admin_addr: SocketAddr,
    admin_stop: CancellationToken,
}

impl App {
    /// Binds the admin server and creates the producer.
    ///
    /// # Errors
    /// The admin address cannot be bound, or librdkafka rejects a property.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        metrics.targets.set(config.targets.len() as f64);
        let health = Health::new(Duration::from_secs(60));
        let publisher = Publisher::new(&config.kafka, metrics.clone())?;
        let admin_stop = CancellationToken::new();
        let (admin_addr, serve) = admin::serve(
            config.admin_addr,
            health.clone(),
            metrics.registry.clone(),
            admin_stop.clone(),
        )
        .await?;
        tokio::spawn(serve);
        tracing::info!(admin_addr = %admin_addr, targets = config.targets.len(), topic = %config.kafka.topic, "Checker started.");
        Ok(Self {
            config,
            metrics,
            health,
            publisher,
            admin_addr,
            admin_stop,
        })
    }

    /// The bound admin address (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Probes until `shutdown` is cancelled, then stops scheduling, lets in-flight probes
    /// finish and publish, and flushes the producer, all within the grace period.
    ///
    /// # Errors
    /// None today; kept for symmetry with the sink.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            metrics,
            health,
            publisher,
            admin_stop,
            ..
        } = self;
        // In the background: probing starts at once even when the broker is down (the producer
        // buffers results until it is back).
        let kafka = config.kafka.clone();
        tokio::spawn(async move {
            if let Err(e) = kafka.ensure_topic().await {
                tracing::warn!(error = %e, topic = %kafka.topic, "Could not create the topic; assuming it exists or will be created.");
            }
        });

        // Readiness: the broker answers a metadata request for our topic.
        let readiness = {
            let (publisher, health, topic, stop) = (
                publisher.clone(),
                health.clone(),
                config.kafka.topic.clone(),
                shutdown.clone(),
            );
            let heartbeat = health.heartbeat("readiness");
            tokio::spawn(async move {
                loop {
                    let p = publisher.clone();
                    let t = topic.clone();
                    let state = kafka::check_metadata(move || {
                        kafka::topic_partitions(p.producer().client(), &t, Duration::from_secs(3))
                    })
                    .await
                    .map_err(|e| format!("Kafka: {e}"));
                    health.set_ready(state);
                    heartbeat.beat();
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            })
        };

        let tracker = TaskTracker::new();
        let scheduler = Scheduler {
            permits: Arc::new(Semaphore::new(config.probe_concurrency)),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            tracker: tracker.clone(),
            instance_id: Arc::from(config.instance_id.as_str()),
            timer: Arc::new(crate::timer::Timer::start()),
        };
        let schedules = TaskTracker::new();
        for target in config.targets {
            schedules.spawn(scheduler.clone().run_target(Arc::new(target), shutdown.clone()));
        }
        schedules.close();

        // Liveness: the supervisor loop turns while the runtime is healthy.
        let heartbeat = health.heartbeat("supervisor");
        loop {
            heartbeat.beat();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }

        tracing::info!(
            in_flight = metrics.in_flight.get(),
            "Stopping: no new probes; waiting for in-flight probes and deliveries."
        );
        let deadline = tokio::time::Instant::now() + config.shutdown_grace;
        schedules.wait().await;
        let drained = common::shutdown::drain(&tracker, config.shutdown_grace).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(left)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!(drained, "Producer flushed; checker stopped."),
            Ok(Err(e)) => tracing::error!(error = %e, "Producer flush did not complete; queued results may be lost."),
            Err(e) => tracing::error!(error = %e, "Producer flush task failed."),
        }
        readiness.abort();
        admin_stop.cancel();
        Ok(())
    }
}
