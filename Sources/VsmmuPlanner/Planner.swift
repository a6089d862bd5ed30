// The planner: desired graph, allocations, diff, operations.
