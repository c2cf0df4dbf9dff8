//! Wiring: configuration → admin server, pool, consumer → migrate → consume until stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::admin::{self, Health};
use common::kafka;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consume::{BatchLimits, Loop, SinkContext, CONSUMER_DEFAULTS};
use crate::metrics::Metrics;
use crate::stall::{self, StallDetector};
use crate::store::{ErrorClass, Store};

/// The sink, built and listening, not yet consuming.
pub struct App {
    config: Config,
    metrics: Metrics,
    health: Arc<Health>,
    store: Store,
    consumer: Arc<StreamConsumer<SinkContext>>,
    admin_addr: SocketAddr,
    admin_stop: CancellationToken,
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
        let admin_stop = CancellationToken::new();
        let (admin_addr, serve) = admin::serve(
            config.admin_addr,
            health.clone(),
            metrics.registry.clone(),
            admin_stop.clone(),
        )
        .await?;
        tokio::spawn(serve);
        tracing::info!(admin_addr = %admin_addr, topic = %config.kafka.topic, group_id = %config.group_id, "Sink started.");
        Ok(Self {
            config,
            metrics,
            health,
            store,
            consumer: Arc::new(consumer),
            admin_addr,
            admin_stop,
        })
    }

    /// The bound admin address (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Migrates, then consumes until `shutdown` is cancelled. Waits for PostgreSQL and the
    /// broker when they are not reachable yet.
    ///
    /// On a fatal database error (schema or permissions), stops consuming, reports not ready
    /// and keeps serving `/healthz`, `/readyz` and `/metrics` until shutdown, so the cause is
    /// visible without a restart loop.
    ///
    /// # Errors
    /// None today; fatal conditions are logged and reported by `/readyz`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            metrics,
            health,
            store,
            consumer,
            admin_stop,
            ..
        } = self;
        let heartbeat = health.heartbeat("consumer");
        let fatal: Arc<std::sync::Mutex<Option<String>>> = Arc::default();

        // Readiness: PostgreSQL answers on a pooled connection, the broker knows the topic,
        // and the partitions this sink answers for make progress (see `stall`).
        let readiness = {
            let (store, consumer, health, topic, fatal, stop, metrics) = (
                store.clone(),
                consumer.clone(),
                health.clone(),
                config.kafka.topic.clone(),
                fatal.clone(),
                shutdown.clone(),
                metrics.clone(),
            );
            let mut detector = StallDetector::new(&topic, config.stall_timeout, Instant::now());
            let hb = health.heartbeat("readiness");
            tokio::spawn(async move {
                loop {
                    let c = consumer.clone();
                    let t = topic.clone();
                    let kafka_state =
                        kafka::check_metadata(move || kafka::topic_partitions(c.client(), &t, Duration::from_secs(3)))
                            .await;
                    let observation = match &kafka_state {
                        Ok(()) => {
                            let (c, t) = (consumer.clone(), topic.clone());
                            tokio::task::spawn_blocking(move || stall::observe(&*c, &t, Duration::from_secs(3)))
                                .await
                                .map_err(|e| e.to_string())
                                .and_then(|r| r)
                        }
                        Err(e) => Err(e.clone()),
                    };
                    let now = Instant::now();
                    let verdict = detector.observe(now, observation.as_ref().map_err(String::as_str));
                    tracing::debug!(?observation, ?verdict, "Progress observed.");
                    metrics
                        .last_progress
                        .set(stall::unix_seconds(verdict.last_progress, now));
                    if observation.is_ok() {
                        metrics.partitions_assigned.set(verdict.assigned as i64);
                    }
                    let db_state = store.ping().await;
                    let state = match (fatal.lock().expect("lock").clone(), kafka_state, db_state) {
                        (Some(f), _, _) => Err(format!("stopped: {f}")),
                        (None, Err(k), _) => Err(format!("Kafka: {k}")),
                        (None, _, Err(d)) => Err(format!("PostgreSQL: {}", d.message)),
                        (None, Ok(()), Ok(())) => verdict.state.map_err(|s| format!("stalled: {s}")),
                    };
                    health.set_ready(state);
                    hb.beat();
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            })
        };

        // Migrations wait for the database.
        let mut migrated = false;
        while !shutdown.is_cancelled() {
            heartbeat.beat();
            match store.migrate().await {
                Ok(()) => {
                    migrated = true;
                    break;
                }
                Err(e) if e.class == ErrorClass::Transient => {
                    tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying migrations in 2s.");
                    common::shutdown::until_cancelled(&shutdown, tokio::time::sleep(Duration::from_secs(2))).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "Migrations failed.");
                    *fatal.lock().expect("lock") = Some(format!("migrations failed: {e}"));
                    break;
                }
            }
        }

        if migrated {
            // Partitions now and every hour.
            let maintenance = {
                let (store, stop, ahead, retention) = (
                    store.clone(),
                    shutdown.clone(),
                    config.partitions_ahead,
                    config.retention,
                );
                tokio::spawn(async move {
                    loop {
                        if let Err(e) = store.maintain_partitions(chrono::Utc::now(), ahead, retention).await {
                            tracing::warn!(error = %e, "Partition maintenance failed; retrying in a minute.");
                            if common::shutdown::until_cancelled(&stop, tokio::time::sleep(Duration::from_secs(60)))
                                .await
                                .is_none()
                            {
                                break;
                            }
                            continue;
                        }
                        if common::shutdown::until_cancelled(&stop, tokio::time::sleep(Duration::from_secs(3600)))
                            .await
                            .is_none()
                        {
                            break;
                        }
                    }
                })
            };
            // Before subscribing (librdkafka looks for a missing subscribed topic again only at
            // the next metadata refresh), but never holding up shutdown.
            if let Some(Err(e)) = common::shutdown::until_cancelled(&shutdown, config.kafka.ensure_topic()).await {
                tracing::warn!(error = %e, topic = %config.kafka.topic, "Could not create the topic; assuming it exists or will be created.");
            }
            consumer.subscribe(&[&config.kafka.topic])?;
            let consume = Loop {
                consumer: &consumer,
                topic: config.kafka.topic.clone(),
                store: store.clone(),
                limits: BatchLimits {
                    max_rows: config.batch_max_rows,
                    max_bytes: config.batch_max_bytes,
                    linger: config.batch_linger,
                },
                write_concurrency: config.write_concurrency,
                metrics: metrics.clone(),
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
            maintenance.abort();
        }

        // After a fatal error, stay up (unready) until asked to stop.
        while !shutdown.is_cancelled() {
            heartbeat.beat();
            common::shutdown::until_cancelled(&shutdown, tokio::time::sleep(Duration::from_secs(1))).await;
        }
        readiness.abort();
        admin_stop.cancel();
        Ok(())
    }
}
