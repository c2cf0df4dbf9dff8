//! When PostgreSQL refuses a batch: the canary that tells an error of the rows from one of
//! the database, and what becomes of a row or dead letter refused alone (see
//! [`Store::write`]). Nothing here decides to retry; transient errors go back to the caller.

use chrono::{DateTime, Utc};
use common::result::ProbeResult;
use uuid::Uuid;

use super::write::{Finish, WriteOutcome};
use super::{DeadLetter, DeadLetterClass, ErrorClass, Row, Store, StoreError};

/// The longest error text of a `data` dead letter, in bytes.
const MAX_ERROR_BYTES: usize = 4096;
/// The error text of a dead letter PostgreSQL refused as first written, in bytes.
const SHORT_ERROR_BYTES: usize = 512;

impl Store {
    /// Writes a canary row (when `row`) and a canary dead letter (when `dead_letter`), as a
    /// batch would be written, and rolls back.
    ///
    /// # Errors
    /// The canary's error: transient as classified, anything else as [`ErrorClass::Fatal`].
    pub(super) async fn canary(&self, row: bool, dead_letter: bool) -> Result<(), StoreError> {
        let now = Utc::now();
        let rows: Vec<Row> = row
            .then(|| Row {
                result: canary_result(now),
                partition: -1,
                offset: -1,
                key: None,
                payload: None,
            })
            .into_iter()
            .collect();
        let dead: Vec<DeadLetter> = dead_letter
            .then(|| DeadLetter {
                topic: self.topic.clone(),
                partition: -1,
                offset: -1,
                key: None,
                payload: None,
                error_class: DeadLetterClass::Canary,
                error: "canary".into(),
            })
            .into_iter()
            .collect();
        match self.write_tx(&rows, &dead, Finish::Rollback).await {
            Ok(_) => Ok(()),
            Err(c) if c.class == ErrorClass::Transient => Err(c),
            Err(c) => Err(StoreError {
                class: ErrorClass::Fatal,
                message: format!(
                    "{} (a canary write fails too: the error does not depend on the rows)",
                    c.message
                ),
                ..c
            }),
        }
    }

    /// Dead-letters a row PostgreSQL refused alone while a canary passed.
    pub(super) async fn reject_row(&self, row: &Row, e: &StoreError) -> Result<WriteOutcome, StoreError> {
        tracing::warn!(partition = row.partition, offset = row.offset, code = %e.code, error = %e.message, "PostgreSQL refused a row; dead-lettering it.");
        let (key, payload) = match &row.payload {
            Some(p) => (row.key.clone(), p.clone()),
            None => (
                Some(row.result.target.as_bytes().to_vec()),
                serde_json::to_vec(&row.result).unwrap_or_default(),
            ),
        };
        let letter = DeadLetter {
            topic: self.topic.clone(),
            partition: row.partition,
            offset: row.offset,
            key,
            payload: Some(payload),
            error_class: DeadLetterClass::Data,
            error: shorten(&format!("SQLSTATE {}: {}", e.code, e.message), MAX_ERROR_BYTES),
        };
        let out = Box::pin(self.write(&[], &[letter])).await?;
        Ok(WriteOutcome {
            offered: 1,
            rejected_rows: 1,
            ..out
        })
    }

    /// Stores a dead letter PostgreSQL refused alone while a canary passed: with its error
    /// text shortened, then without its key and payload, then not at all (see [`Store::write`]).
    pub(super) async fn reject_dead_letter(&self, d: &DeadLetter, e: &StoreError) -> Result<WriteOutcome, StoreError> {
        tracing::warn!(partition = d.partition, offset = d.offset, code = %e.code, error = %e.message, "PostgreSQL refused a dead letter; storing it with its error text shortened.");
        let mut letter = DeadLetter {
            error: format!(
                "{} (error text shortened: PostgreSQL refused this dead letter, SQLSTATE {})",
                shorten(&d.error, SHORT_ERROR_BYTES),
                e.code
            ),
            ..d.clone()
        };
        let e = match self.write_tx(&[], std::slice::from_ref(&letter), Finish::Commit).await {
            Ok(out) => return Ok(out),
            Err(e) if !e.may_depend_on_rows() => return Err(e),
            Err(e) => e,
        };
        tracing::warn!(partition = d.partition, offset = d.offset, code = %e.code, error = %e.message, "PostgreSQL refused a dead letter again; storing it without key and payload.");
        letter.error = format!(
            "{} (key and payload of {} bytes not stored: PostgreSQL refused this dead letter, SQLSTATE {}; \
             the message stays at its topic, partition and offset until the topic's retention)",
            shorten(&d.error, SHORT_ERROR_BYTES),
            d.payload.as_ref().map_or(0, Vec::len),
            e.code
        );
        letter.key = None;
        letter.payload = None;
        match self.write_tx(&[], std::slice::from_ref(&letter), Finish::Commit).await {
            Ok(out) => Ok(out),
            Err(e) if !e.may_depend_on_rows() => Err(e),
            Err(e) => {
                tracing::error!(topic = %d.topic, partition = d.partition, offset = d.offset, code = %e.code, error = %e.message, "PostgreSQL refuses even the bare dead letter while a canary passes; skipping it (the message stays in the topic until its retention).");
                Ok(WriteOutcome {
                    skipped_dead_letters: 1,
                    ..WriteOutcome::default()
                })
            }
        }
    }
}

/// The canary of [`Store::write`]: a plain, successful result at `now` under a name no
/// target has (the write is rolled back anyway).
fn canary_result(now: DateTime<Utc>) -> ProbeResult {
    ProbeResult {
        schema_version: common::result::SCHEMA_VERSION,
        check_id: Uuid::new_v4(),
        instance_id: "healthcheck-sink".into(),
        location: common::result::DEFAULT_LOCATION.into(),
        target: "healthcheck-sink canary".into(),
        url: "http://canary.invalid/".into(),
        scheduled_at: now,
        started_at: now,
        lateness_seconds: 0.0,
        timeout_seconds: 1.0,
        duration_seconds: 0.001,
        success: true,
        error_kind: None,
        error: None,
        status_code: Some(200),
        first_status_code: Some(200),
        redirects: 0,
        final_url: None,
        http_version: Some("HTTP/1.1".into()),
        ip_address: Some("127.0.0.1".into()),
        ip_family: Some("ipv4".into()),
        regex_matched: None,
        body_bytes: Some(2),
        content_length: Some(2),
        phases: common::result::Phases::default(),
        tls: None,
    }
}

/// `s` cut to at most `max` bytes, at a character boundary, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortened_text_ends_at_a_character_boundary() {
        assert_eq!(shorten("short", 10), "short");
        let cut = shorten(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
        assert_eq!(cut.trim_end_matches('…'), "éééé");
    }

    #[test]
    fn the_canary_passes_decoding() {
        assert_eq!(crate::decode::validate(&canary_result(Utc::now())), Ok(()));
    }
}
