"""`piml backup` and `piml restore`: one archive of the platform's data and the project, and putting it back."""
