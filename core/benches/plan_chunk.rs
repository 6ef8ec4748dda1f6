//! The planner alone (`planner::plan_chunk`) on generated rooms, one chunk each: a
//! linear room and a forked one (federation forks, spam joins, backfilled roots).
//! Loading, interning and resolving happen once, outside the measurement.
//!
//! `cargo bench -p synapse_compress_core --bench plan_chunk` (or `make bench-core`);
//! add `-- --quick` for a short run, `-- --save-baseline NAME` / `--baseline NAME` to
//! compare two versions.

use std::collections::HashMap;
use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use synapse_compress_core::planner::{self, Input};
use synapse_compress_core::state::{Dictionary, State};
use synapse_compress_core::{Error, GroupId, LevelSpec, Levels};
use synapse_compress_testkit::generator::{self, GenSpec, RoomSpec, Shape};

/// Groups per room: one chunk of the largest size people run (`chunk_size` 5000).
const GROUPS: usize = 5_000;
const LEVELS: &str = "100,50,25";

fn room(shape: Shape) -> GenSpec {
    GenSpec {
        seed: 1,
        first_id: 1,
        id_gaps: 0.0,
        rooms: vec![RoomSpec {
            initial_members: 200,
            new_member_rate: 0.06,
            leave_rate: 0.02,
            ..RoomSpec::new("!bench:example.org", GROUPS, shape)
        }],
    }
}

/// The room's groups as the engine hands them to the planner: own rows interned, state
/// resolved over the stored predecessor.
fn inputs(spec: &GenSpec) -> Vec<Input> {
    let mut dict = Dictionary::default();
    let mut states: HashMap<GroupId, Rc<State>> = HashMap::new();
    let mut inputs = Vec::new();
    generator::generate(spec, &mut |g| {
        let g = g.group;
        let own = State::from_rows(&mut dict, &g.rows).expect("generated rows are unambiguous");
        let orig_prev = g.prevs.first().copied();
        let state = match orig_prev {
            Some(p) => Rc::new(states[&p].overlay(&own)),
            None => Rc::new(own.clone()),
        };
        states.insert(g.id, state.clone());
        inputs.push(Input {
            id: g.id,
            orig_prev,
            own,
            state: Some(state),
            skip: None,
        });
    });
    inputs
}

fn plan_chunk(c: &mut Criterion) {
    let spec = LevelSpec::parse(LEVELS).expect("levels");
    let mut group = c.benchmark_group("plan_chunk");
    group.throughput(Throughput::Elements(GROUPS as u64));
    for (name, shape) in [("linear", Shape::Linear), ("forks", Shape::Forks)] {
        let inputs = inputs(&room(shape));
        group.bench_with_input(BenchmarkId::from_parameter(name), &inputs, |b, inputs| {
            b.iter(|| {
                let mut levels = Levels::new(&spec);
                // The whole room is one chunk: no group outside it is ever asked for.
                let plan = planner::plan_chunk(inputs, &mut levels, true, &mut |id| {
                    Err(Error::Store(format!("group {id} is outside the chunk")))
                })
                .expect("plan");
                black_box(plan.planned.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, plan_chunk);
criterion_main!(benches);
