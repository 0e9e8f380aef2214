-- Run bodies compressed by the anonymizer, in a thread beside its event loop, as LZ4 frames
-- (codec 'lz4-frame'), and stored as they come: the registry neither receives the body's
-- full size nor compresses it again (EXTERNAL: out of line, uncompressed). Chunks written
-- before (codec NULL) were compressed by the registry and are read as they are.
ALTER TABLE run_chunks ADD COLUMN codec text CHECK (codec IN ('lz4-frame'));
ALTER TABLE run_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
