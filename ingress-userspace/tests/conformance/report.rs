//! One line per scenario (PASS / FAIL / SKIPPED), and the counts.
//!
//! A step that matches no definition is a failure.

use std::{collections::HashMap, io::Write};

use cucumber::{
    Event, Writer, cli,
    event::{self, Cucumber, Feature, Rule, Scenario, Source, Step, StepError},
    gherkin, parser,
};

/// What happened in one scenario so far.
#[derive(Default)]
struct Outcome {
    failure: Option<String>,
    skipped_step: Option<String>,
}

/// Prints a line as each scenario finishes and keeps the counts.
#[derive(Default)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    running: HashMap<Source<gherkin::Scenario>, Outcome>,
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }

    fn on_scenario<W>(
        &mut self,
        feature: &gherkin::Feature,
        scenario: &Source<gherkin::Scenario>,
        ev: Scenario<W>,
    ) {
        let outcome = self.running.entry(scenario.clone()).or_default();
        match ev {
            Scenario::Step(step, Step::Failed(_, _, _, err))
            | Scenario::Background(step, Step::Failed(_, _, _, err)) => {
                outcome.failure.get_or_insert_with(|| {
                    format!(
                        "step `{}{}` (line {}): {}",
                        step.keyword,
                        step.value,
                        step.position.line,
                        step_error(&err)
                    )
                });
            }
            Scenario::Step(step, Step::Skipped) | Scenario::Background(step, Step::Skipped) => {
                outcome
                    .skipped_step
                    .get_or_insert_with(|| format!("{}{}", step.keyword, step.value));
            }
            Scenario::Hook(which, event::Hook::Failed(_, info)) => {
                outcome
                    .failure
                    .get_or_insert_with(|| format!("{which} hook: {}", panic_text(&*info)));
            }
            Scenario::Finished => {
                let outcome = self.running.remove(scenario).unwrap_or_default();
                let title = title(feature, scenario);
                let line = match (outcome.failure, outcome.skipped_step) {
                    (Some(why), _) => {
                        self.failed += 1;
                        format!("FAIL     {title}\n         {why}")
                    }
                    (None, Some(step)) => {
                        self.failed += 1;
                        format!("FAIL     {title}\n         no step definition matches `{step}`")
                    }
                    (None, None) => {
                        self.passed += 1;
                        format!("PASS     {title}")
                    }
                };
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            _ => {}
        }
    }
}

/// `Feature :: Scenario [example values] (file:line)`.
fn title(feature: &gherkin::Feature, scenario: &gherkin::Scenario) -> String {
    let mut t = format!("{} :: {}", feature.name, scenario.name.trim());
    if let Some(table) = scenario.examples.first().and_then(|e| e.table.as_ref())
        && let [header, row] = table.rows.as_slice()
    {
        let values: Vec<String> = header
            .iter()
            .zip(row)
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        t.push_str(&format!(" [{}]", values.join(", ")));
    }
    let file = feature
        .path
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    t.push_str(&format!(" ({file}:{})", scenario.position.line));
    t
}

fn step_error(err: &StepError) -> String {
    match err {
        StepError::Panic(info) => panic_text(&**info),
        other => other.to_string(),
    }
}

fn panic_text(info: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = info.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = info.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "panicked".to_string()
    }
}

impl<W> Writer<W> for Report {
    type Cli = cli::Empty;

    async fn handle_event(&mut self, ev: parser::Result<Event<Cucumber<W>>>, _cli: &Self::Cli) {
        match ev.map(Event::into_inner) {
            Err(e) => {
                self.failed += 1;
                println!("FAIL     {e}");
            }
            Ok(Cucumber::Feature(feature, Feature::Scenario(sc, ev)))
            | Ok(Cucumber::Feature(feature, Feature::Rule(_, Rule::Scenario(sc, ev)))) => {
                self.on_scenario(&feature, &sc, ev.event);
            }
            Ok(_) => {}
        }
    }
}
