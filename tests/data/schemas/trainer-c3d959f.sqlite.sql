-- Schema of the trainer store as release c3d959f created it (create_all, before Alembic),
-- sqlite. The upgrade test builds a store from this, fills it and migrates it.

CREATE TABLE gate_decisions (
	id INTEGER NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	version VARCHAR(64) NOT NULL, 
	promoted BOOLEAN NOT NULL, 
	checks_json TEXT NOT NULL, 
	principal VARCHAR(128) NOT NULL, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_gate_decisions_kind ON gate_decisions (kind);

CREATE INDEX ix_gate_decisions_version ON gate_decisions (version);

CREATE TABLE job_events (
	id INTEGER NOT NULL, 
	job_id VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	step INTEGER NOT NULL, 
	metrics_json TEXT NOT NULL, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_job_events_job_id ON job_events (job_id);

CREATE TABLE jobs (
	id VARCHAR(64) NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	executor VARCHAR(16) NOT NULL, 
	idempotency_key VARCHAR(256), 
	spec_json TEXT NOT NULL, 
	inputs_json TEXT NOT NULL, 
	step INTEGER NOT NULL, 
	total_steps INTEGER NOT NULL, 
	metrics_json TEXT NOT NULL, 
	failure_reason TEXT NOT NULL, 
	model_version VARCHAR(64) NOT NULL, 
	report_uri TEXT NOT NULL, 
	pid INTEGER, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	ended_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (idempotency_key)
);

CREATE INDEX ix_jobs_created_at ON jobs (created_at);

CREATE INDEX ix_jobs_kind ON jobs (kind);

CREATE INDEX ix_jobs_state ON jobs (state);

CREATE TABLE model_versions (
	version VARCHAR(64) NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	seq INTEGER NOT NULL, 
	stage VARCHAR(16) NOT NULL, 
	base_model TEXT NOT NULL, 
	adapter_path TEXT NOT NULL, 
	artifact_uri TEXT NOT NULL, 
	weights_hash VARCHAR(64) NOT NULL, 
	parent_version VARCHAR(64) NOT NULL, 
	snapshot_hash VARCHAR(64) NOT NULL, 
	job_id VARCHAR(64) NOT NULL, 
	metrics_json TEXT NOT NULL, 
	manifest_json TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (version)
);

CREATE INDEX ix_model_versions_kind ON model_versions (kind);

CREATE TABLE serving_events (
	id INTEGER NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	version VARCHAR(64) NOT NULL, 
	action VARCHAR(16) NOT NULL, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_serving_events_kind ON serving_events (kind);
