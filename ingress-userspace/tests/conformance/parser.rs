//! Reads the `.feature` files of a directory (at run time, never copied) and
//! expands Scenario Outlines the way the upstream conformance suite (godog)
//! does: `<name>` is replaced only where `name` is a column of the Examples
//! table; any other `<...>` text stays as written. cucumber's own parser
//! refuses such outlines (the suite's `<key>`/`<value>` data tables).

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use cucumber::{
    cli, gherkin,
    parser::{self, Parser},
};
use futures::stream;

/// The `.feature` files in `dir`, sorted by name.
pub fn feature_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e.eq_ignore_ascii_case("feature"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A [`Parser`] over every `.feature` file of the input directory.
pub struct Features;

impl<I: AsRef<Path>> Parser<I> for Features {
    type Cli = cli::Empty;
    type Output = stream::Iter<std::vec::IntoIter<parser::Result<gherkin::Feature>>>;

    fn parse(self, input: I, _cli: cli::Empty) -> Self::Output {
        stream::iter(load(input.as_ref()))
    }
}

fn load(dir: &Path) -> Vec<parser::Result<gherkin::Feature>> {
    let files = match feature_files(dir) {
        Ok(files) => files,
        Err(source) => {
            return vec![Err(parser::Error::Parsing(Arc::new(
                gherkin::ParseFileError::Reading {
                    path: dir.to_path_buf(),
                    source,
                },
            )))];
        }
    };
    files
        .into_iter()
        .map(|f| {
            gherkin::Feature::parse_path(&f, gherkin::GherkinEnv::default())
                .map(expand_feature)
                .map_err(|e| parser::Error::Parsing(Arc::new(e)))
        })
        .collect()
}

fn expand_feature(mut feature: gherkin::Feature) -> gherkin::Feature {
    let expand = |scenarios: Vec<gherkin::Scenario>| -> Vec<gherkin::Scenario> {
        scenarios.into_iter().flat_map(expand_scenario).collect()
    };
    for rule in &mut feature.rules {
        rule.scenarios = expand(std::mem::take(&mut rule.scenarios));
    }
    feature.scenarios = expand(std::mem::take(&mut feature.scenarios));
    feature
}

/// One scenario per Examples row; a scenario without Examples (even one
/// written as "Scenario Outline") runs once, as written.
fn expand_scenario(scenario: gherkin::Scenario) -> Vec<gherkin::Scenario> {
    if scenario.examples.is_empty() {
        return vec![scenario];
    }
    let mut out = Vec::new();
    for examples in &scenario.examples {
        let Some(table) = &examples.table else {
            continue;
        };
        let Some((header, rows)) = table.rows.split_first() else {
            continue;
        };
        for (i, row) in rows.iter().enumerate() {
            let subst = |text: &str| -> String {
                header
                    .iter()
                    .zip(row)
                    .fold(text.to_string(), |acc, (k, v)| {
                        acc.replace(&format!("<{k}>"), v)
                    })
            };
            let mut s = scenario.clone();
            // The row's own line, so that every expansion is told apart.
            s.position = gherkin::LineCol {
                line: table.position.line + 1 + i,
                col: table.position.col,
            };
            s.tags.extend(examples.tags.iter().cloned());
            s.name = subst(&s.name);
            for step in &mut s.steps {
                step.value = subst(&step.value);
                if let Some(d) = &mut step.docstring {
                    *d = subst(d);
                }
                if let Some(t) = &mut step.table {
                    for cell in t.rows.iter_mut().flatten() {
                        *cell = subst(cell);
                    }
                }
            }
            let mut ex = examples.clone();
            if let Some(t) = &mut ex.table {
                t.rows = vec![header.clone(), row.clone()];
            }
            s.examples = vec![ex];
            out.push(s);
        }
    }
    out
}
