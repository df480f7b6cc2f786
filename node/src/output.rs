//! Human tables by default, JSON for scripts.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Renders rows under headers with columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// Pretty JSON of `value`, or a JSON error object if it cannot be encoded.
pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode output: {e}\"}}"))
}

/// Milliseconds since the Unix epoch as UTC `YYYY-MM-DD HH:MM:SS.mmm`.
pub fn utc_datetime(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {}", utc_time(ms))
}

/// Milliseconds since the Unix epoch as the UTC time of day `HH:MM:SS.mmm`.
pub fn utc_time(ms: u64) -> String {
    let of_day = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        of_day / 3_600_000,
        of_day / 60_000 % 60,
        of_day / 1_000 % 60,
        of_day % 1_000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn epoch_milliseconds_read_as_utc() {
        assert_eq!(super::utc_datetime(0), "1970-01-01 00:00:00.000");
        // 2024-02-29 23:59:59.999 UTC, a leap day.
        assert_eq!(
            super::utc_datetime(1_709_251_199_999),
            "2024-02-29 23:59:59.999"
        );
        assert_eq!(super::utc_time(1_709_251_199_999), "23:59:59.999");
        assert_eq!(
            super::utc_datetime(1_798_761_600_000),
            "2027-01-01 00:00:00.000"
        );
    }

    #[test]
    fn columns_align_to_the_widest_cell() {
        let t = super::table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "mgmt1".into()],
                vec!["22".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID  NAME\n1   mgmt1\n22  x\n");
    }
}
