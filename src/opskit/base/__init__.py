"""The ground floor: errors and exit codes, clocks, processes, locks, config, schedules, text. Imports nothing else of opskit."""
