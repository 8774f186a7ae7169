//! kubectl-like tables: upper-case headers, columns aligned with three
//! spaces between them, no borders.

/// A table being filled row by row.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    /// Adds a row; one cell per header.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len(), "one cell per column");
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline; the
    /// last column is not padded.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers = self.headers.iter().map(|h| h.to_string());
        for cells in std::iter::once(headers.collect::<Vec<_>>()).chain(self.rows.iter().cloned()) {
            let last = cells.len().saturating_sub(1);
            for (i, cell) in cells.iter().enumerate() {
                out.push_str(cell);
                if i < last {
                    out.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count() + 3));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_headers() {
        let mut t = Table::new(&["NAME", "READY", "AGE"]);
        t.row(vec!["default/web".into(), "2/2".into(), "5s".into()]);
        t.row(vec!["kube-system/dns".into(), "10/12".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "NAME              READY   AGE\n\
             default/web       2/2     5s\n\
             kube-system/dns   10/12   -\n"
        );
    }
}
