"""Teaching the model the job: the house-style training set, the data it learns from what it
serves, and the gated training runs. ``house_style`` reads and checks the written set."""
