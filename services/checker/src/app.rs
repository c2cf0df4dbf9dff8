//! Wiring: configuration → admin server, producer, scheduler, roster → run until stopped.
//!
//! The target source decides who drives the roster: a fixed list once, `TARGETS_FILE` at
//! start and at each reload (`crate::reload`), the targets topic through the consumer group
//! (`crate::fleet`). Shutdown stops the roster's schedules, waits for the probes in flight and
//! flushes the producer within the grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::admin::{self, Health};
use common::kafka;
use rdkafka::error::KafkaError;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, TargetSource};
use crate::fleet::{self, Fleet, FleetMetrics};
use crate::metrics::{DropReason, Metrics};
use crate::publish::{PublishLoop, Publisher};
use crate::reload::FileReloader;
use crate::roster::Roster;
use crate::schedule::Scheduler;
use crate::target::Target;

/// The checker, built and listening, not yet probing.
pub struct App {
    config: Config,
    metrics: Metrics,
    health: Arc<Health>,
    publisher: Publisher,
    publish_loop: PublishLoop,
    admin_addr: SocketAddr,
    admin_stop: CancellationToken,
}

impl App {
    /// Binds the admin server and creates the producer.
    ///
    /// # Errors
    /// The admin address cannot be bound, or librdkafka rejects a property.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::with(config.per_target_metrics);
        metrics.targets.set(config.targets.initial().len() as f64);
        let health = Health::new(Duration::from_secs(60));
        let (publisher, publish_loop) = Publisher::new(&config.kafka, config.results_waiting_limit, metrics.clone())?;
        let publish_loop = publish_loop.replace_when_stalled(config.delivery_stall_timeout);
        let (admin_addr, admin_stop) = admin::start(config.admin_addr, health.clone(), metrics.clone()).await?;
        tracing::info!(admin_addr = %admin_addr, targets = config.targets.initial().len(), location = %config.location, topic = %config.kafka.topic, "Checker started.");
        Ok(Self {
            config,
            metrics,
            health,
            publisher,
            publish_loop,
            admin_addr,
            admin_stop,
        })
    }

    /// The bound admin address (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The app's metrics (what `/metrics` serves), readable after it stopped.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Probes until `shutdown` is cancelled, then stops scheduling, lets in-flight probes
    /// finish and publish, and flushes the producer, all within the grace period.
    ///
    /// # Errors
    /// None today; kept for symmetry with the sink.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            mut config,
            metrics,
            health,
            publisher,
            publish_loop,
            admin_stop,
            ..
        } = self;
        let mut publishing = tokio::spawn(publish_loop.run());
        // In the background: probing starts at once even when the broker is down (the producer
        // buffers results until it is back).
        let kafka = config.kafka.clone();
        tokio::spawn(async move {
            if let Err(e) = kafka.ensure_topic().await {
                tracing::warn!(error = %e, topic = %kafka.topic, "Could not create the topic; assuming it exists or will be created.");
            }
        });

        let tracker = TaskTracker::new();
        let scheduler = Scheduler {
            permits: Arc::new(Semaphore::new(config.probe_concurrency)),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            tracker: tracker.clone(),
            instance_id: Arc::from(config.instance_id.as_str()),
            location: Arc::from(config.location.as_str()),
            timer: Arc::new(crate::timer::Timer::start()),
        };
        // Fleet mode: the roster's schedules stop when the fleet's hand-over after shutdown is
        // over, not at shutdown itself.
        let roster_stop = match config.targets {
            TargetSource::Topic => CancellationToken::new(),
            _ => shutdown.clone(),
        };
        let roster = Roster::new(scheduler, roster_stop.clone());
        // The start-up targets move to the roster: a copy left in the configuration would
        // double each target's memory for the life of the process.
        let initial: Vec<Arc<Target>> = match &mut config.targets {
            TargetSource::Fixed(targets) | TargetSource::File { targets, .. } => {
                std::mem::take(targets).into_iter().map(Arc::new).collect()
            }
            TargetSource::Topic => Vec::new(),
        };
        let mut fleet = None;
        match &config.targets {
            TargetSource::Fixed(_) => roster.sync(initial),
            TargetSource::File { path, .. } => {
                roster.sync(initial);
                let reloader = FileReloader {
                    path: path.clone(),
                    context: config.target_context.clone(),
                    roster: roster.clone(),
                    metrics: metrics.clone(),
                    poll: config.targets_file_poll_interval,
                };
                tokio::spawn(reloader.run(shutdown.clone()));
            }
            // Fleet mode: `crate::fleet` joins the location's consumer group on the targets
            // topic and drives `roster` from its assignments.
            TargetSource::Topic => {
                let kafka = config.kafka.clone();
                tokio::spawn(async move {
                    if let Err(e) = crate::targets_topic::ensure_topic(&kafka).await {
                        tracing::warn!(error = %e, topic = %kafka.targets_topic, "Could not create the targets topic; assuming it exists or will be created.");
                    }
                });
                fleet = Some(Fleet::start(
                    &config.kafka,
                    config.fleet.clone(),
                    config.target_context.clone(),
                    roster.clone(),
                    FleetMetrics::register(&metrics.registry),
                    shutdown.clone(),
                    roster_stop.clone(),
                )?);
            }
        }

        let readiness = tokio::spawn(admin::readiness_loop(
            health.clone(),
            admin::READINESS_INTERVAL,
            shutdown.clone(),
            Delivering {
                publisher: publisher.clone(),
                stall: config.delivery_stall_timeout,
                fleet: fleet.as_ref().map(Fleet::readiness),
            },
        ));

        if let Some(e) = supervise(&health, &shutdown, &mut publishing).await {
            shutdown.cancel();
            readiness.abort();
            admin_stop.cancel();
            return Err(e);
        }
        let stopping = std::time::Instant::now();
        if let Some(fleet) = &fleet {
            // The group was left at once; the handed-over targets are probed until the
            // hand-over period ends (bounded by the grace period), then the schedules stop.
            fleet.stopped(config.shutdown_grace).await;
            roster_stop.cancel();
        }
        finish(
            config.shutdown_grace.saturating_sub(stopping.elapsed()),
            &metrics,
            &publisher,
            &roster,
            tracker,
            publishing,
        )
        .await;
        readiness.abort();
        admin_stop.cancel();
        Ok(())
    }
}

/// Readiness: results are being delivered. The broker answers a metadata request for our
/// topic, and results do not wait longer than `stall` (DELIVERY_STALL_TIMEOUT) without any
/// delivery (a broker that answers metadata but takes no results, or a producer that cannot
/// deliver, is not ready either).
/// In fleet mode, also every assigned targets partition has been loaded.
struct Delivering {
    publisher: Publisher,
    stall: Duration,
    fleet: Option<fleet::Readiness>,
}

impl admin::Check for Delivering {
    async fn check(&mut self) -> Result<(), String> {
        let p = self.publisher.clone();
        kafka::check_metadata(move || p.metadata(Duration::from_secs(3)))
            .await
            .map_err(|e| format!("Kafka: {e}"))
            .and_then(|()| self.publisher.delivering(self.stall))
            .and_then(|()| self.fleet.as_ref().map_or(Ok(()), fleet::Readiness::check))
    }
}

/// The supervisor loop (liveness: it turns while the runtime is healthy), until shutdown.
/// A publish loop that ends before shutdown (it could not replace a producer after a fatal
/// error) ends it with that error, so that the orchestrator restarts the checker rather than
/// let it probe and drop every result.
async fn supervise(
    health: &Health,
    shutdown: &CancellationToken,
    publishing: &mut JoinHandle<Result<(), KafkaError>>,
) -> Option<anyhow::Error> {
    let heartbeat = health.heartbeat("supervisor");
    loop {
        heartbeat.beat();
        tokio::select! {
            () = shutdown.cancelled() => return None,
            ended = &mut *publishing => return Some(match ended {
                Ok(Ok(())) => anyhow::anyhow!("the publish loop ended before shutdown"),
                Ok(Err(e)) => anyhow::Error::new(e).context("Kafka producer could not be replaced"),
                Err(e) => anyhow::Error::new(e).context("the publish task failed"),
            }),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Shutdown, within `grace`: no new probes (the roster's schedules end), in-flight probes (`tracker`)
/// finish and publish, then the publish loop delivers what waits; what is still waiting when
/// the grace period is over is counted as dropped.
async fn finish(
    grace: Duration,
    metrics: &Metrics,
    publisher: &Publisher,
    roster: &Roster,
    tracker: TaskTracker,
    mut publishing: JoinHandle<Result<(), KafkaError>>,
) {
    tracing::info!(
        in_flight = metrics.in_flight.get(),
        "Stopping: no new probes; waiting for in-flight probes and deliveries."
    );
    let deadline = tokio::time::Instant::now() + grace;
    roster.wait().await;
    let drained = common::shutdown::drain(&tracker, grace).await;
    publisher.close();
    match tokio::time::timeout_at(deadline, &mut publishing).await {
        Ok(Ok(Ok(()))) => tracing::info!(drained, "Every result delivered; checker stopped."),
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "Publishing stopped with an error; waiting results are lost.")
        }
        Ok(Err(e)) => tracing::error!(error = %e, "Publish task failed."),
        Err(_) => {
            publishing.abort();
            let lost = publisher.waiting();
            metrics.results_dropped.inc_by(DropReason::Shutdown, lost as u64);
            tracing::error!(
                lost,
                "Grace period over with results still waiting for the broker; they are lost."
            );
        }
    }
}
