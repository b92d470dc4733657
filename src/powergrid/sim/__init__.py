"""The simulator behind ``powergrid simulate``: scenarios, the runner, reports and plots."""
