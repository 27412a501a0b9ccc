//! `depends_on`: start order and cycle detection.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::Config;

/// Program indices in dependency order: each after all of its dependencies,
/// otherwise in file order (always the earliest ready program next).
///
/// Unknown names and cycles cannot occur in a loaded config; if a hand-built
/// one has them, unknown names are ignored and programs caught in a cycle
/// are appended in file order, so this never loops or panics.
pub(crate) fn start_order(config: &Config) -> Vec<usize> {
    let n = config.programs.len();
    let index: HashMap<&str, usize> = config
        .programs
        .iter()
        .enumerate()
        .rev() // the first definition wins, as in validation
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut waiting_on = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, p) in config.programs.iter().enumerate() {
        for dep in &p.depends_on {
            if let Some(&d) = index.get(dep.as_str()) {
                if d != i {
                    waiting_on[i] += 1;
                    dependents[d].push(i);
                }
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..n)
        .filter(|&i| waiting_on[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        placed[i] = true;
        for &j in &dependents[i] {
            waiting_on[j] -= 1;
            if waiting_on[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    order.extend((0..n).filter(|&i| !placed[i]));
    order
}

/// Finds dependency cycles in a graph given as adjacency lists of
/// `(target, edge id)`. Returns, for each cycle found, the closing edge id
/// and the cycle's nodes starting at that edge's source.
///
/// Iterative, so a long chain of programs cannot overflow the stack.
pub(crate) fn find_cycles(edges: &[Vec<(usize, usize)>]) -> Vec<(usize, Vec<usize>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let n = edges.len();
    let mut mark = vec![Mark::New; n];
    let mut cycles = Vec::new();
    for root in 0..n {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnStack;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let Some(&(target, edge)) = edges[node].get(*next) else {
                mark[node] = Mark::Done;
                stack.pop();
                continue;
            };
            *next += 1;
            match mark.get(target).copied() {
                Some(Mark::New) => {
                    mark[target] = Mark::OnStack;
                    stack.push((target, 0));
                }
                Some(Mark::OnStack) => {
                    let from = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                    let mut cycle: Vec<usize> = vec![node];
                    cycle.extend(stack[from..].iter().map(|(n, _)| *n));
                    cycle.pop(); // `node` again, already first
                    cycles.push((edge, cycle));
                }
                _ => {}
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_two_cycle_once() {
        // 0 -> 1 -> 0
        let edges = vec![vec![(1, 10)], vec![(0, 11)]];
        assert_eq!(find_cycles(&edges), vec![(11, vec![1, 0])]);
    }

    #[test]
    fn no_cycle_in_a_diamond() {
        let edges = vec![vec![(1, 0), (2, 1)], vec![(3, 2)], vec![(3, 3)], vec![]];
        assert!(find_cycles(&edges).is_empty());
    }

    #[test]
    fn three_cycle_starts_at_closing_edge() {
        // 0 -> 1 -> 2 -> 0
        let edges = vec![vec![(1, 0)], vec![(2, 1)], vec![(0, 2)]];
        assert_eq!(find_cycles(&edges), vec![(2, vec![2, 0, 1])]);
    }

    #[test]
    fn long_chain_does_not_overflow() {
        let n = 200_000;
        let edges: Vec<Vec<(usize, usize)>> = (0..n)
            .map(|i| if i + 1 < n { vec![(i + 1, i)] } else { vec![] })
            .collect();
        assert!(find_cycles(&edges).is_empty());
    }
}
