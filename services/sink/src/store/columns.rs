//! The columns of `probe_results` the sink writes, declared once: `probe_result_columns!`
//! takes one line per column (SQL name, PostgreSQL type, Rust type, value from the result and
//! its Kafka origin) and generates every positional list the write path needs: the column list
//! [`COLUMNS`], the binary COPY types [`COPY_TYPES`], [`copy_row`], the UNNEST statement
//! `INSERT_ROWS` and its column arrays (`Columns`). Adding a field is one line here plus a
//! migration; the unit tests compare the table with the migration, in order and by type.
//!
//! vector's postgres sink gets its columns from the table's row type instead
//! (`jsonb_populate_recordset(NULL::table, $1)`), which costs a JSON encoding per row; the
//! sink keeps binary COPY, its hot path (`make bench`, scenario `write`), with no allocation
//! per row: text is borrowed from the result. Never issues SQL itself ([`crate::store`] runs
//! these statements).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use common::result::ProbeResult;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::Row;

/// Generates the write path's column lists from one table.
///
/// Shape: `for (result, partition, offset) as 'a;` names the bindings the value expressions
/// use (`result: &'a ProbeResult`, `partition: i32`, `offset: i64`: the Kafka origin), then
/// one `sql_name: TYPE as RustType = expression;` per column, in the migration's order, where
/// `TYPE` is a [`Type`] constant and `RustType` implements [`ToSql`] for it (checked by a
/// unit test; both write methods bind the same Rust type).
macro_rules! probe_result_columns {
    (
        for ($r:ident, $partition:ident, $offset:ident) as $a:lifetime;
        $($name:ident : $sql:ident as $ty:ty = $get:expr;)+
    ) => {
        /// The columns of `probe_results` the sink writes (all but `inserted_at`), in
        /// [`COPY_TYPES`] order.
        pub const COLUMNS: &str = probe_result_columns!(@join $($name)+);

        /// Number of columns in [`COLUMNS`].
        pub const COLUMN_COUNT: usize = [$(stringify!($name)),+].len();

        /// The column names of [`COLUMNS`], one by one.
        pub const COLUMN_NAMES: [&str; COLUMN_COUNT] = [$(stringify!($name)),+];

        /// PostgreSQL types of [`COLUMNS`], for the binary COPY encoder.
        pub const COPY_TYPES: [Type; COLUMN_COUNT] = [$(Type::$sql),+];

        /// Encodes one result and its Kafka origin as a binary COPY row of [`COLUMNS`] /
        /// [`COPY_TYPES`].
        ///
        /// # Errors
        /// The COPY stream failed (the connection or the server rejected the data).
        pub async fn copy_row<$a>(
            writer: Pin<&mut BinaryCopyInWriter>,
            $r: &$a ProbeResult,
            $partition: i32,
            $offset: i64,
        ) -> Result<(), tokio_postgres::Error> {
            $(let $name: $ty = $get;)+
            writer.write(&[$(&$name as &(dyn ToSql + Sync)),+]).await
        }

        /// Column arrays for [`INSERT_ROWS`], built in one pass over the rows; text borrows
        /// from the rows (no copies).
        pub(crate) struct Columns<$a> {
            $($name: Vec<$ty>,)+
        }

        impl<$a> Columns<$a> {
            /// The arrays of `rows`, one per column.
            pub(crate) fn from_rows(rows: &$a [Row]) -> Self {
                let mut c = Self {
                    $($name: Vec::with_capacity(rows.len()),)+
                };
                for row in rows {
                    let ($r, $partition, $offset) = (&row.result, row.partition, row.offset);
                    $(c.$name.push($get);)+
                }
                c
            }

            /// The bind parameters of [`INSERT_ROWS`], `$1` first.
            pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); COLUMN_COUNT] {
                [$(&self.$name),+]
            }

            /// Whether each column's Rust type can encode its PostgreSQL type.
            #[cfg(test)]
            fn accepted() -> [(&'static str, bool); COLUMN_COUNT] {
                [$((stringify!($name), <$ty as ToSql>::accepts(&Type::$sql))),+]
            }
        }
    };
    (@join $first:ident $($rest:ident)*) => {
        concat!(stringify!($first) $(, ", ", stringify!($rest))*)
    };
}

probe_result_columns! {
    for (r, partition, offset) as 'a;
    check_id: UUID as Uuid = r.check_id;
    scheduled_at: TIMESTAMPTZ as DateTime<Utc> = r.scheduled_at;
    started_at: TIMESTAMPTZ as DateTime<Utc> = r.started_at;
    target_name: TEXT as &'a str = &r.target;
    url: TEXT as &'a str = &r.url;
    instance_id: TEXT as &'a str = &r.instance_id;
    schema_version: INT4 as i32 = i32::try_from(r.schema_version).unwrap_or(i32::MAX);
    success: BOOL as bool = r.success;
    error_kind: TEXT as Option<&'a str> = r.error_kind.as_deref();
    error: TEXT as Option<&'a str> = r.error.as_deref();
    status_code: INT4 as Option<i32> = r.status_code.map(i32::from);
    first_status_code: INT4 as Option<i32> = r.first_status_code.map(i32::from);
    duration_seconds: FLOAT8 as f64 = r.duration_seconds;
    lateness_seconds: FLOAT8 as f64 = r.lateness_seconds;
    timeout_seconds: FLOAT8 as f64 = r.timeout_seconds;
    resolve_seconds: FLOAT8 as Option<f64> = r.phases.resolve;
    connect_seconds: FLOAT8 as Option<f64> = r.phases.connect;
    tls_seconds: FLOAT8 as Option<f64> = r.phases.tls;
    processing_seconds: FLOAT8 as Option<f64> = r.phases.processing;
    transfer_seconds: FLOAT8 as Option<f64> = r.phases.transfer;
    redirects: INT4 as i32 = i32::try_from(r.redirects).unwrap_or(i32::MAX);
    final_url: TEXT as Option<&'a str> = r.final_url.as_deref();
    http_version: TEXT as Option<&'a str> = r.http_version.as_deref();
    ip_address: INET as Option<IpAddr> = r.ip_address.as_deref().and_then(|a| a.parse().ok());
    ip_family: TEXT as Option<&'a str> = r.ip_family.as_deref();
    regex_matched: BOOL as Option<bool> = r.regex_matched;
    body_bytes: INT8 as Option<i64> = r.body_bytes.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    content_length: INT8 as Option<i64> = r.content_length.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    tls_version: TEXT as Option<&'a str> = r.tls.as_ref().and_then(|t| t.version.as_deref());
    tls_cipher: TEXT as Option<&'a str> = r.tls.as_ref().and_then(|t| t.cipher.as_deref());
    tls_leaf_not_after: TIMESTAMPTZ as Option<DateTime<Utc>> = r.tls.as_ref().and_then(|t| t.leaf_not_after);
    tls_earliest_not_after: TIMESTAMPTZ as Option<DateTime<Utc>> = r.tls.as_ref().and_then(|t| t.earliest_not_after);
    tls_leaf_subject: TEXT as Option<&'a str> = r.tls.as_ref().and_then(|t| t.leaf_subject.as_deref());
    kafka_partition: INT4 as i32 = partition;
    kafka_offset: INT8 as i64 = offset;
    location: TEXT as &'a str = &r.location;
}

/// `INSERT ... SELECT * FROM UNNEST($1::uuid[], ...)` of [`COLUMNS`], one array parameter per
/// column ([`Columns::params`]).
pub(crate) static INSERT_ROWS: LazyLock<String> = LazyLock::new(|| {
    let arrays: Vec<String> = COPY_TYPES
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("${}::{}[]", i + 1, ty.name()))
        .collect();
    format!(
        "INSERT INTO probe_results ({COLUMNS}) SELECT * FROM UNNEST({}) ON CONFLICT DO NOTHING",
        arrays.join(", ")
    )
});

/// The session's staging table for [`super::WriteMethod::Copy`], emptied at every commit.
pub(crate) const CREATE_STAGE: &str =
    "CREATE TEMP TABLE IF NOT EXISTS probe_results_stage (LIKE probe_results INCLUDING DEFAULTS) ON COMMIT DELETE ROWS";

/// Binary COPY of [`COLUMNS`] into the staging table.
pub(crate) static STAGE_COPY: LazyLock<String> =
    LazyLock::new(|| format!("COPY probe_results_stage ({COLUMNS}) FROM STDIN (FORMAT binary)"));

/// Binary COPY of [`COLUMNS`] straight into `probe_results` (its partitions): no replay may be
/// among the rows.
pub(crate) static DIRECT_COPY: LazyLock<String> =
    LazyLock::new(|| format!("COPY probe_results ({COLUMNS}) FROM STDIN (FORMAT binary)"));

/// Moves the staged rows into `probe_results`, absorbing replays.
pub(crate) static STAGE_INSERT: LazyLock<String> = LazyLock::new(|| {
    format!("INSERT INTO probe_results ({COLUMNS}) SELECT {COLUMNS} FROM probe_results_stage ON CONFLICT DO NOTHING")
});

#[cfg(test)]
mod tests {
    use super::*;

    /// The PostgreSQL type at the start of `rest`, in PostgreSQL's internal name (`integer` →
    /// `int4`, as [`Type::name`] has it).
    fn column_type(rest: &str) -> String {
        let ty = [
            "double precision",
            "timestamptz",
            "integer",
            "boolean",
            "bigint",
            "text",
            "uuid",
            "inet",
        ]
        .into_iter()
        .find(|t| rest.starts_with(t))
        .unwrap_or_else(|| panic!("unknown type in {rest:?}"));
        match ty {
            "double precision" => "float8",
            "integer" => "int4",
            "boolean" => "bool",
            "bigint" => "int8",
            other => other,
        }
        .to_string()
    }

    /// `(name, type)` of every column of `probe_results` in the migrations, in the order
    /// PostgreSQL has them: those of `CREATE TABLE probe_results` (the first migration), then
    /// each `ALTER TABLE probe_results ADD COLUMN` of the later ones, in version order.
    fn migration_columns() -> Vec<(String, String)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        // refinery's order: by the version number after `V`.
        files.sort_by_key(|f| {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            name[1..name.find("__").unwrap()].parse::<u32>().unwrap()
        });
        let sql = std::fs::read_to_string(&files[0]).unwrap();
        let body = sql
            .split_once("CREATE TABLE probe_results (")
            .expect("CREATE TABLE probe_results")
            .1
            .split_once(") PARTITION BY")
            .expect("end of CREATE TABLE probe_results")
            .0;
        let mut columns: Vec<(String, String)> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("--") && !l.starts_with("PRIMARY KEY"))
            .map(|l| {
                let (name, rest) = l.split_once(char::is_whitespace).unwrap();
                (name.to_string(), column_type(rest.trim_start()))
            })
            .collect();
        for file in &files[1..] {
            let sql = std::fs::read_to_string(file).unwrap();
            for l in sql.lines().map(str::trim).filter(|l| !l.starts_with("--")) {
                assert!(
                    !(l.contains("probe_results") && l.contains("DROP COLUMN") || l.contains("ALTER COLUMN")),
                    "{}: teach this test the change {l:?}",
                    file.display()
                );
                if let Some(rest) = l.strip_prefix("ALTER TABLE probe_results ADD COLUMN ") {
                    let (name, rest) = rest.split_once(char::is_whitespace).unwrap();
                    columns.push((name.to_string(), column_type(rest.trim_start())));
                }
            }
        }
        columns
    }

    #[test]
    fn the_table_matches_the_migration_in_order_and_type() {
        let mut migration = migration_columns();
        let at = migration
            .iter()
            .position(|(n, _)| n == "inserted_at")
            .expect("inserted_at");
        assert_eq!(
            migration.remove(at),
            ("inserted_at".into(), "timestamptz".into()),
            "inserted_at, the column the sink leaves to its default"
        );
        let table: Vec<(String, String)> = COLUMN_NAMES
            .iter()
            .zip(&COPY_TYPES)
            .map(|(n, t)| ((*n).to_string(), t.name().to_string()))
            .collect();
        assert_eq!(table, migration);
        assert_eq!(COLUMNS, COLUMN_NAMES.join(", "));
    }

    #[test]
    fn every_rust_type_encodes_its_column_type() {
        for (name, accepted) in Columns::accepted() {
            assert!(accepted, "{name}: the Rust type does not encode the column's type");
        }
    }

    #[test]
    fn the_unnest_statement_has_one_typed_array_per_column() {
        assert!(INSERT_ROWS.contains("UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::text[]"));
        assert!(INSERT_ROWS.contains(&format!("${COLUMN_COUNT}::text[]) ON CONFLICT DO NOTHING")));
    }
}
