//! Loading `benches/seed.tsv` and `benches/claims.tsv`.
//!
//! Both files share one fixed format: `#` comment lines, then one tab-separated header row, then
//! data rows. Columns are looked up by header name, so adding a column does not break the loader.

use std::fmt::Write as _;
use std::path::Path;

/// A parsed tab-separated table: its header and its data rows, each with its 1-based line number.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Table {
    /// Column names, in file order.
    pub(crate) header: Vec<String>,
    /// `(line number, fields)` for each data row.
    pub(crate) rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    /// Parses `text` (`name` is used in error messages only).
    ///
    /// Blank lines and lines starting with `#` are skipped; the first other line is the header.
    /// Every data row must have exactly as many fields as the header.
    pub(crate) fn parse(name: &str, text: &str) -> Result<Self, String> {
        let mut header: Option<Vec<String>> = None;
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<String> = line.split('\t').map(str::to_owned).collect();
            match &header {
                None => header = Some(fields),
                Some(h) if h.len() != fields.len() => {
                    return Err(format!(
                        "{name}:{line_no}: expected {} tab-separated fields (as in the header), got {}",
                        h.len(),
                        fields.len()
                    ));
                }
                Some(_) => rows.push((line_no, fields)),
            }
        }
        let header = header.ok_or_else(|| format!("{name}: no header row"))?;
        Ok(Self { header, rows })
    }

    /// Index of column `col`, or an error naming the table and the columns it has.
    pub(crate) fn column(&self, name: &str, col: &str) -> Result<usize, String> {
        self.header.iter().position(|h| h == col).ok_or_else(|| {
            let mut msg = format!("{name}: missing column `{col}`; columns are:");
            for h in &self.header {
                let _ = write!(msg, " `{h}`");
            }
            msg
        })
    }
}

/// One row of `benches/seed.tsv`: a seed operation and the criterion benchmark that measures it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeedRow {
    /// The seed's own `module/operation` key.
    pub(crate) key: String,
    /// The seed's module (class) name, e.g. `KVCompressor`.
    pub(crate) module: String,
    /// Human description of the operation and its parameters.
    pub(crate) operation: String,
    /// The seed's published latency in µs, exactly as written in the file.
    pub(crate) seed_us: String,
    /// Notes from the seed table.
    pub(crate) notes: String,
    /// Criterion group, `<RustType>/<operation>`.
    pub(crate) group: String,
    /// Criterion benchmark id within the group.
    pub(crate) id: String,
    /// The seed's Python latency on our dev machine in µs, as written (may be empty).
    pub(crate) python_us: String,
}

impl SeedRow {
    /// The published seed latency in µs, if it parses as a positive number.
    pub(crate) fn seed_us_value(&self) -> Option<f64> {
        positive(&self.seed_us)
    }

    /// The seed's Python latency on our machine in µs, if present and positive.
    pub(crate) fn python_us_value(&self) -> Option<f64> {
        positive(&self.python_us)
    }
}

/// One row of `benches/claims.tsv`: a technique and the seed's claimed improvement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClaimRow {
    /// Key the claims program reports under.
    pub(crate) key: String,
    /// The technique, e.g. `KV cache memory (INT8+prune)`.
    pub(crate) technique: String,
    /// The seed's claimed improvement, as written.
    pub(crate) seed_improvement: String,
    /// The seed module that implements it.
    pub(crate) module: String,
}

fn positive(s: &str) -> Option<f64> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// Parses the text of `seed.tsv`.
pub(crate) fn parse_seed(name: &str, text: &str) -> Result<Vec<SeedRow>, String> {
    let t = Table::parse(name, text)?;
    let col = |c: &str| t.column(name, c);
    let (key, module, operation, seed_us) = (
        col("key")?,
        col("module")?,
        col("operation")?,
        col("seed_us")?,
    );
    let (notes, group, id, python_us) =
        (col("notes")?, col("group")?, col("id")?, col("python_us")?);
    Ok(t.rows
        .iter()
        .map(|(_, f)| SeedRow {
            key: f[key].clone(),
            module: f[module].clone(),
            operation: f[operation].clone(),
            seed_us: f[seed_us].clone(),
            notes: f[notes].clone(),
            group: f[group].clone(),
            id: f[id].clone(),
            python_us: f[python_us].clone(),
        })
        .collect())
}

/// Parses the text of `claims.tsv`.
pub(crate) fn parse_claims(name: &str, text: &str) -> Result<Vec<ClaimRow>, String> {
    let t = Table::parse(name, text)?;
    let key = t.column(name, "key")?;
    let technique = t.column(name, "technique")?;
    let seed_improvement = t.column(name, "seed_improvement")?;
    let module = t.column(name, "module")?;
    Ok(t.rows
        .iter()
        .map(|(_, f)| ClaimRow {
            key: f[key].clone(),
            technique: f[technique].clone(),
            seed_improvement: f[seed_improvement].clone(),
            module: f[module].clone(),
        })
        .collect())
}

/// Reads a file to a string with an error message that names it.
pub(crate) fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Loads and parses `seed.tsv` from `path`.
pub(crate) fn load_seed(path: &Path) -> Result<Vec<SeedRow>, String> {
    parse_seed(&path.display().to_string(), &read(path)?)
}

/// Loads and parses `claims.tsv` from `path`.
pub(crate) fn load_claims(path: &Path) -> Result<Vec<ClaimRow>, String> {
    parse_claims(&path.display().to_string(), &read(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "# comment\n# another\n\
key\tmodule\toperation\tseed_us\tnotes\tgroup\tid\tpython_us\n\
a/b\tA\tb() n=1\t1.5\tnote\tA/b\tn=1\t3.0\n\
a/c\tA\tc()\t2\t\tA/c\tx\t\n";

    #[test]
    fn parses_seed_rows_by_column_name() {
        let rows = parse_seed("seed.tsv", SEED).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].group, "A/b");
        assert_eq!(rows[0].id, "n=1");
        assert_eq!(rows[0].seed_us_value(), Some(1.5));
        assert_eq!(rows[0].python_us_value(), Some(3.0));
        assert_eq!(rows[1].python_us_value(), None);
    }

    #[test]
    fn reports_ragged_rows_and_missing_columns() {
        let err = Table::parse("t.tsv", "a\tb\n1\t2\t3\n").unwrap_err();
        assert_eq!(
            err,
            "t.tsv:2: expected 2 tab-separated fields (as in the header), got 3"
        );
        let err = parse_claims("c.tsv", "key\ttechnique\n").unwrap_err();
        assert!(err.contains("missing column `seed_improvement`"), "{err}");
        assert_eq!(
            Table::parse("e.tsv", "# only\n").unwrap_err(),
            "e.tsv: no header row"
        );
    }

    #[test]
    fn the_real_tables_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let seed = load_seed(&root.join("benches/seed.tsv")).unwrap();
        assert!(!seed.is_empty());
        assert!(load_claims(&root.join("benches/claims.tsv")).unwrap().len() > 1);
    }
}
