-- The archive's first schema (docs/data.md). MySQL 8 and MariaDB alike; every statement
-- may run twice (DDL commits implicitly, so a crash may fall before the version row).

CREATE TABLE IF NOT EXISTS events (
    event_id VARCHAR(128) NOT NULL,
    sport VARCHAR(64) NOT NULL,
    first_ts BIGINT NOT NULL,
    PRIMARY KEY (event_id),
    KEY events_sport (sport, first_ts)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS markets (
    market_id VARCHAR(128) NOT NULL,
    event_id VARCHAR(128) NOT NULL,
    sport VARCHAR(64) NOT NULL,
    kind VARCHAR(64) NOT NULL,
    name VARCHAR(255) NOT NULL,
    first_ts BIGINT NOT NULL,
    PRIMARY KEY (market_id),
    KEY markets_event (event_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS selections (
    market_id VARCHAR(128) NOT NULL,
    selection_id VARCHAR(128) NOT NULL,
    name VARCHAR(255) NOT NULL,
    PRIMARY KEY (market_id, selection_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS market_messages (
    market_id VARCHAR(128) NOT NULL,
    epoch VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    kind VARCHAR(8) NOT NULL,
    ts BIGINT NOT NULL,
    payload MEDIUMBLOB NOT NULL,
    PRIMARY KEY (market_id, epoch, seq),
    KEY market_messages_ts (market_id, ts)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS market_changes (
    market_id VARCHAR(128) NOT NULL,
    epoch VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    status VARCHAR(16) NULL,
    reason VARCHAR(255) NULL,
    name VARCHAR(255) NULL,
    main TINYINT NULL,
    PRIMARY KEY (market_id, epoch, seq),
    KEY market_changes_ts (market_id, ts)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS prices (
    market_id VARCHAR(128) NOT NULL,
    epoch VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    selection_id VARCHAR(128) NOT NULL,
    ts BIGINT NOT NULL,
    price VARCHAR(40) NULL,
    status VARCHAR(16) NULL,
    PRIMARY KEY (market_id, epoch, seq, selection_id),
    KEY prices_ts (market_id, ts)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS results (
    market_id VARCHAR(128) NOT NULL,
    epoch VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    selection_id VARCHAR(128) NOT NULL,
    event_id VARCHAR(128) NOT NULL,
    ts BIGINT NOT NULL,
    status VARCHAR(16) NULL,
    dead_heat VARCHAR(40) NULL,
    void_factor VARCHAR(40) NULL,
    is_rollback TINYINT NOT NULL DEFAULT 0,
    PRIMARY KEY (market_id, epoch, seq, selection_id),
    KEY results_event (event_id, ts)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS archive_offsets (
    consumer_group VARCHAR(255) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    kafka_partition INT NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, topic, kafka_partition)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
