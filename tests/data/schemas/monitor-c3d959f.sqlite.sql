-- Schema of the monitor store as release c3d959f created it (create_all, before Alembic),
-- sqlite. The upgrade test builds a store from this, fills it and migrates it.

CREATE TABLE baselines (
	model_version VARCHAR(64) NOT NULL, 
	outputs INTEGER NOT NULL, 
	frozen_at DATETIME NOT NULL, 
	PRIMARY KEY (model_version)
);

CREATE TABLE outputs (
	output_id VARCHAR(64) NOT NULL, 
	model_version VARCHAR(64) NOT NULL, 
	prompt_template_version VARCHAR(64) NOT NULL, 
	prompt TEXT, 
	text TEXT, 
	latency_s FLOAT NOT NULL, 
	completion_tokens INTEGER NOT NULL, 
	reward_score FLOAT, 
	in_baseline BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	recorded_at DATETIME NOT NULL, 
	PRIMARY KEY (output_id)
);

CREATE INDEX ix_outputs_created_at ON outputs (created_at);

CREATE INDEX ix_outputs_in_baseline ON outputs (in_baseline);

CREATE INDEX ix_outputs_model_version ON outputs (model_version);

CREATE TABLE retraining_runs (
	id VARCHAR(40) NOT NULL, 
	"trigger" TEXT NOT NULL, 
	state INTEGER NOT NULL, 
	running VARCHAR(1), 
	snapshot_id VARCHAR(64) NOT NULL, 
	snapshot_hash VARCHAR(64) NOT NULL, 
	pairs INTEGER NOT NULL, 
	served_policy VARCHAR(64) NOT NULL, 
	reward_version VARCHAR(64) NOT NULL, 
	policy_version VARCHAR(64) NOT NULL, 
	promoted_version VARCHAR(64) NOT NULL, 
	reason TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	ended_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (running)
);

CREATE INDEX ix_retraining_runs_created_at ON retraining_runs (created_at);

CREATE INDEX ix_retraining_runs_snapshot_hash ON retraining_runs (snapshot_hash);

CREATE INDEX ix_retraining_runs_state ON retraining_runs (state);

CREATE TABLE flags (
	id VARCHAR(40) NOT NULL, 
	output_id VARCHAR(64) NOT NULL, 
	model_version VARCHAR(64) NOT NULL, 
	category INTEGER NOT NULL, 
	severity INTEGER NOT NULL, 
	comment TEXT NOT NULL, 
	corrected_text TEXT NOT NULL, 
	status INTEGER NOT NULL, 
	flagged_by VARCHAR(128) NOT NULL, 
	resolved_by VARCHAR(128) NOT NULL, 
	resolution_reason TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	resolved_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(output_id) REFERENCES outputs (output_id) ON DELETE CASCADE
);

CREATE INDEX ix_flags_created_at ON flags (created_at);

CREATE INDEX ix_flags_model_version ON flags (model_version);

CREATE INDEX ix_flags_output_id ON flags (output_id);

CREATE INDEX ix_flags_status ON flags (status);

CREATE TABLE retraining_run_steps (
	id INTEGER NOT NULL, 
	run_id VARCHAR(40) NOT NULL, 
	seq INTEGER NOT NULL, 
	name VARCHAR(40) NOT NULL, 
	ref VARCHAR(128) NOT NULL, 
	outcome TEXT NOT NULL, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (run_id, name), 
	FOREIGN KEY(run_id) REFERENCES retraining_runs (id) ON DELETE CASCADE
);

CREATE INDEX ix_retraining_run_steps_run_id ON retraining_run_steps (run_id);

CREATE TABLE retraining_triggers (
	"key" VARCHAR(200) NOT NULL, 
	run_id VARCHAR(40) NOT NULL, 
	PRIMARY KEY ("key"), 
	FOREIGN KEY(run_id) REFERENCES retraining_runs (id) ON DELETE CASCADE
);

CREATE INDEX ix_retraining_triggers_run_id ON retraining_triggers (run_id);

CREATE TABLE flag_feedback (
	flag_id VARCHAR(40) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	reason TEXT NOT NULL, 
	attempts INTEGER NOT NULL, 
	annotator_id VARCHAR(64) NOT NULL, 
	prompt_id VARCHAR(64) NOT NULL, 
	response_id VARCHAR(64) NOT NULL, 
	candidate_ids TEXT NOT NULL, 
	correction_id VARCHAR(64) NOT NULL, 
	task_ids TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	delivered_at DATETIME, 
	run_id VARCHAR(40), 
	PRIMARY KEY (flag_id), 
	FOREIGN KEY(flag_id) REFERENCES flags (id) ON DELETE CASCADE
);

CREATE INDEX ix_flag_feedback_delivered_at ON flag_feedback (delivered_at);

CREATE INDEX ix_flag_feedback_run_id ON flag_feedback (run_id);

CREATE INDEX ix_flag_feedback_state ON flag_feedback (state);
