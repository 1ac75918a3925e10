"""report.html and the comparison page, built from experiment folders only (never the driver)."""
