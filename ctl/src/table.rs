//! Plain-text tables for podrouterctl: left-aligned columns, two spaces
//! apart, a header row.
//!
//! Invariant: every row has as many cells as the header (short rows are
//! padded, long rows cut).
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        let width = self.rows[0].len();
        let mut r: Vec<String> = cells.into_iter().take(width).collect();
        r.resize(width, String::new());
        self.rows.push(r);
    }

    pub fn render(&self) -> String {
        let width = self.rows[0].len();
        let widths: Vec<usize> = (0..width)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 == width {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(["xyz".into(), "1".into()]);
        t.row(["q".into(), "22".into()]);
        assert_eq!(t.render(), "A    LONGER\nxyz  1\nq    22\n");
    }
}
