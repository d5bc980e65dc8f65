"""AAD Pod Identity's end-to-end suite: one set of scenarios, two backends (the sandbox and a
real cluster). Python 3 standard library and kubectl only. Entry point: `e2e/run`."""
