//! Wiring: configuration → admin server, pool, consumers → migrate → consume (results and
//! the targets topic) until stopped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::admin::{self, Health, Heartbeat};
use common::kafka;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consume::{BatchLimits, Loop, SinkContext, CONSUMER_DEFAULTS};
use crate::metrics::Metrics;
use crate::retry::{self, GaveUp};
use crate::stall::{self, StallDetector};
use crate::store::{Store, StoreError};

/// The sink, built and listening, not yet consuming.
pub struct App {
    config: Config,
    metrics: Metrics,
    health: Arc<Health>,
    store: Store,
    consumer: Arc<StreamConsumer<SinkContext>>,
    /// The targets topic's consumer ([`crate::targets`]).
    targets_consumer: Arc<StreamConsumer>,
    admin_addr: SocketAddr,
    admin_stop: CancellationToken,
    /// The status server's address and stop token, unless `STATUS_ADDR=off`.
    status: Option<(SocketAddr, CancellationToken)>,
}

impl App {
    /// Binds the admin server, creates the pool and the consumer (no connection yet).
    ///
    /// # Errors
    /// The admin address cannot be bound, or librdkafka rejects a property.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let health = Health::new(Duration::from_secs(60));
        let store = Store::new(config.database_url.expose(), config.pool_size, &config.kafka.topic)
            .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?
            .with_method(config.write_method)
            .with_statement_timeout(config.statement_timeout);
        let mut defaults: Vec<(&str, &str)> = vec![("group.id", &config.group_id)];
        defaults.extend_from_slice(CONSUMER_DEFAULTS);
        if let Some(id) = &config.group_instance_id {
            defaults.push(("group.instance.id", id));
        }
        let consumer: StreamConsumer<SinkContext> = config
            .kafka
            .client_config(&defaults)
            .create_with_context(SinkContext::new(metrics.clone()))?;
        let targets_consumer = crate::targets::consumer(&config.kafka, &crate::targets::group_id(&config.group_id))?;
        let (admin_addr, admin_stop) =
            admin::start(config.admin_addr, health.clone(), metrics.registry.clone()).await?;
        let status = match config.status_addr {
            None => None,
            Some(addr) => {
                // Its own read-only pool: a page load never takes a writer's connection.
                let reader = Store::read_only(
                    config.database_url.expose(),
                    config.status_pool_size,
                    &config.kafka.topic,
                    crate::status::STATEMENT_TIMEOUT,
                )
                .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
                let status_metrics = crate::status::StatusMetrics::register(&metrics.registry)?;
                let started = crate::status::start(addr, reader, Some(status_metrics))
                    .await
                    .map_err(|e| anyhow::anyhow!("STATUS_ADDR {addr}: {e}"))?;
                tracing::info!(status_addr = %started.0, "Status page listening.");
                Some(started)
            }
        };
        tracing::info!(admin_addr = %admin_addr, topic = %config.kafka.topic, group_id = %config.group_id, "Sink started.");
        Ok(Self {
            config,
            metrics,
            health,
            store,
            consumer: Arc::new(consumer),
            targets_consumer: Arc::new(targets_consumer),
            admin_addr,
            admin_stop,
            status,
        })
    }

    /// The bound admin address (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound address of the status page and JSON API (useful with port 0); `None` with
    /// `STATUS_ADDR=off`.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status.as_ref().map(|(addr, _)| *addr)
    }

    /// Migrates, then consumes until `shutdown` is cancelled. Waits for PostgreSQL and the
    /// broker when they are not reachable yet.
    ///
    /// On a fatal database error (schema or permissions), stops consuming, reports not ready
    /// and keeps serving `/healthz`, `/readyz` and `/metrics` until shutdown, so the cause is
    /// visible without a restart loop.
    ///
    /// # Errors
    /// A subscription librdkafka refuses; fatal database conditions are logged and reported by
    /// `/readyz`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let heartbeat = self.health.heartbeat("consumer");
        let fatal = Fatal::default();
        let readiness = tokio::spawn(admin::readiness_loop(
            self.health.clone(),
            admin::READINESS_INTERVAL,
            shutdown.clone(),
            Readiness {
                store: self.store.clone(),
                consumer: self.consumer.clone(),
                topic: self.config.kafka.topic.clone(),
                fatal: fatal.clone(),
                metrics: self.metrics.clone(),
                detector: StallDetector::new(&self.config.kafka.topic, self.config.stall_timeout, Instant::now()),
            },
        ));
        let mut targets = None;
        if migrate(&self.store, &shutdown, &heartbeat, &fatal).await {
            // This month's partition exists before the first write: a row inserted into the
            // default partition while maintenance creates its month's partition is refused
            // (SQLSTATE 23514, "violates partition constraint").
            let next = maintain_once(&self.store, self.config.partitions_ahead, self.config.retention).await;
            let maintenance = tokio::spawn(maintain_partitions(
                self.store.clone(),
                shutdown.clone(),
                self.config.partitions_ahead,
                self.config.retention,
                next,
            ));
            let rollup = tokio::spawn(crate::rollup::run(
                self.store.clone(),
                self.metrics.clone(),
                self.config.rollup_interval,
                shutdown.clone(),
            ));
            targets = Some(tokio::spawn(consume_targets(
                self.targets_consumer.clone(),
                self.store.clone(),
                self.config.kafka.targets_topic.clone(),
                self.metrics.clone(),
                shutdown.clone(),
                fatal.clone(),
            )));
            let consumed = self.consume(&shutdown, &heartbeat, &fatal).await;
            maintenance.abort();
            rollup.abort();
            consumed?;
        }
        stay_up(&shutdown, &heartbeat).await;
        // The targets consumer stops with shutdown; its final write is bounded like the
        // results' (a batch not written is replayed).
        if let Some(mut targets) = targets {
            if tokio::time::timeout(self.config.shutdown_grace, &mut targets)
                .await
                .is_err()
            {
                tracing::warn!("The targets consumer did not stop within the grace period.");
                targets.abort();
            }
        }
        readiness.abort();
        let _ = readiness.await;
        // librdkafka's close (leave the group, commit) waits for the coordinator, which a
        // broker outage takes away: never on a runtime worker, never longer than the grace
        // period.
        let App {
            consumer,
            targets_consumer,
            status,
            admin_stop,
            config,
            ..
        } = self;
        let grace = config.shutdown_grace;
        let (results, targets) = tokio::join!(
            common::kafka::close_within(consumer, grace),
            common::kafka::close_within(targets_consumer, grace)
        );
        if !(results && targets) {
            tracing::warn!(
                grace_seconds = grace.as_secs_f64(),
                "The consumers did not close within the grace period (is the broker down?); their partitions move after the session timeout."
            );
        }
        if let Some((_, stop)) = &status {
            stop.cancel();
        }
        admin_stop.cancel();
        Ok(())
    }

    /// Creates the topic if asked to, subscribes and runs the consume loop until shutdown
    /// (bounded by the grace period once it starts) or a fatal database error, which it
    /// records in `fatal`.
    ///
    /// # Errors
    /// The subscription librdkafka refuses.
    async fn consume(&self, shutdown: &CancellationToken, heartbeat: &Heartbeat, fatal: &Fatal) -> anyhow::Result<()> {
        let config = &self.config;
        // Before subscribing (librdkafka looks for a missing subscribed topic again only at
        // the next metadata refresh), but never holding up shutdown.
        if let Some(Err(e)) = common::shutdown::until_cancelled(shutdown, config.kafka.ensure_topic()).await {
            tracing::warn!(error = %e, topic = %config.kafka.topic, "Could not create the topic; assuming it exists or will be created.");
        }
        self.consumer.subscribe(&[&config.kafka.topic])?;
        let consume = Loop {
            consumer: &self.consumer,
            topic: config.kafka.topic.clone(),
            store: self.store.clone(),
            limits: BatchLimits {
                max_rows: config.batch_max_rows,
                max_bytes: config.batch_max_bytes,
                linger: config.batch_linger,
            },
            write_concurrency: config.write_concurrency,
            metrics: self.metrics.clone(),
            heartbeat: heartbeat.clone(),
        };
        let run = consume.run(shutdown.clone());
        // The grace period bounds the final write and commit once shutdown starts.
        let outcome = tokio::select! {
            r = run => Some(r),
            () = async { shutdown.cancelled().await; tokio::time::sleep(config.shutdown_grace).await } => None,
        };
        match outcome {
            Some(Ok(())) => tracing::info!("Sink stopped; offsets committed."),
            Some(Err(e)) => {
                tracing::error!(error = %e, "Stopped consuming. Fix the database, then restart the sink.");
                *fatal.lock().expect("lock") = Some(e.to_string());
            }
            None => tracing::error!(
                grace_seconds = config.shutdown_grace.as_secs_f64(),
                "Grace period ran out during the final write; unwritten messages will be replayed."
            ),
        }
        Ok(())
    }
}

/// Why the sink stopped working for good (a fatal database error), shown by `/readyz`.
type Fatal = Arc<Mutex<Option<String>>>;

/// Readiness: PostgreSQL answers on a pooled connection, the broker knows the topic, and the
/// partitions this sink answers for make progress (see [`stall`]); never ready after a fatal
/// error.
struct Readiness {
    store: Store,
    consumer: Arc<StreamConsumer<SinkContext>>,
    topic: String,
    fatal: Fatal,
    metrics: Metrics,
    detector: StallDetector,
}

impl admin::Check for Readiness {
    async fn check(&mut self) -> Result<(), String> {
        let (c, t) = (self.consumer.clone(), self.topic.clone());
        let kafka_state =
            kafka::check_metadata(move || kafka::topic_partitions(c.client(), &t, Duration::from_secs(3))).await;
        let observation = match &kafka_state {
            Ok(()) => {
                let (c, t) = (self.consumer.clone(), self.topic.clone());
                tokio::task::spawn_blocking(move || stall::observe(&*c, &t, Duration::from_secs(3)))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
            }
            Err(e) => Err(e.clone()),
        };
        let now = Instant::now();
        let verdict = self.detector.observe(now, observation.as_ref().map_err(String::as_str));
        tracing::debug!(?observation, ?verdict, "Progress observed.");
        self.metrics
            .last_progress
            .set(stall::unix_seconds(verdict.last_progress, now));
        if observation.is_ok() {
            self.metrics.partitions_assigned.set(verdict.assigned as i64);
        }
        let db_state = self.store.ping().await;
        let fatal = self.fatal.lock().expect("lock").clone();
        match (fatal, kafka_state, db_state) {
            (Some(f), _, _) => Err(format!("stopped: {f}")),
            (None, Err(k), _) => Err(format!("Kafka: {k}")),
            (None, _, Err(d)) => Err(format!("PostgreSQL: {}", d.message)),
            (None, Ok(()), Ok(())) => verdict.state.map_err(|s| format!("stalled: {s}")),
        }
    }
}

/// Applies the migrations, retrying every 2 s ([`retry::MIGRATE`]) while PostgreSQL is not
/// reachable; returns whether they were applied. A failure that is not transient is recorded
/// in `fatal`; shutdown ends the wait.
async fn migrate(store: &Store, shutdown: &CancellationToken, heartbeat: &Heartbeat, fatal: &Fatal) -> bool {
    if shutdown.is_cancelled() {
        return false;
    }
    let attempt = || {
        heartbeat.beat();
        store.migrate()
    };
    let on_retry = |e: &StoreError, wait: Duration| {
        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "PostgreSQL not reachable yet; retrying migrations.");
    };
    match retry::until_stopped(retry::MIGRATE, shutdown, None, attempt, on_retry).await {
        Ok(()) => true,
        Err(GaveUp::Fatal(e)) => {
            tracing::error!(error = %e, "Migrations failed.");
            *fatal.lock().expect("lock") = Some(format!("migrations failed: {e}"));
            false
        }
        Err(GaveUp::Stopped(_)) => false,
    }
}

/// The targets consumer until `stop`; a fatal database error (or a refused subscription)
/// stops it and is recorded in `fatal`, so readiness reports it.
async fn consume_targets(
    consumer: Arc<StreamConsumer>,
    store: Store,
    topic: String,
    metrics: Metrics,
    stop: CancellationToken,
    fatal: Fatal,
) {
    if let Err(e) = crate::targets::run(consumer, store, topic, metrics, stop).await {
        tracing::error!(error = %e, "Stopped consuming the targets topic. Fix the database, then restart the sink.");
        *fatal.lock().expect("lock") = Some(format!("targets consumer: {e}"));
    }
}

/// One partition maintenance run; returns when the next is due: in an hour, or in a minute
/// after a failure.
async fn maintain_once(store: &Store, months_ahead: u32, retention: Option<Duration>) -> Duration {
    match store
        .maintain_partitions(chrono::Utc::now(), months_ahead, retention)
        .await
    {
        Ok(()) => Duration::from_secs(3600),
        Err(e) => {
            tracing::warn!(error = %e, "Partition maintenance failed; retrying in a minute.");
            Duration::from_secs(60)
        }
    }
}

/// Partition maintenance after `first_wait`, then every hour (a minute after a failure),
/// until `stop`.
async fn maintain_partitions(
    store: Store,
    stop: CancellationToken,
    months_ahead: u32,
    retention: Option<Duration>,
    first_wait: Duration,
) {
    let mut wait = first_wait;
    loop {
        if common::shutdown::until_cancelled(&stop, tokio::time::sleep(wait))
            .await
            .is_none()
        {
            break;
        }
        wait = maintain_once(&store, months_ahead, retention).await;
    }
}

/// After a fatal error (or none, once shutdown started), stays up, unready, until asked to
/// stop, beating the consumer's heartbeat so that liveness does not restart the sink.
async fn stay_up(shutdown: &CancellationToken, heartbeat: &Heartbeat) {
    while !shutdown.is_cancelled() {
        heartbeat.beat();
        common::shutdown::until_cancelled(shutdown, tokio::time::sleep(Duration::from_secs(1))).await;
    }
}
