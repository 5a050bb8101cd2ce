// The part of parquetjs-lite 0.8.7's API that bench/parquet.ts uses (the package has no types).

declare namespace parquetjs {
  /** Field options; `type` is a Parquet (logical) type name such as `BYTE_ARRAY`. */
  interface FieldDefinition {
    type: string;
    optional?: boolean;
    encoding?: string;
    compression?: string;
    statistics?: boolean;
  }
  class ParquetSchema {
    constructor(fields: Record<string, FieldDefinition>);
  }
  class ParquetWriter {
    static openFile(
      schema: ParquetSchema,
      path: string,
      opts?: { rowGroupSize?: number; pageSize?: number; useDataPageV2?: boolean },
    ): Promise<ParquetWriter>;
    appendRow(row: Record<string, unknown>): Promise<void>;
    close(): Promise<void>;
  }
  interface ParquetCursor {
    next(): Promise<Record<string, unknown> | null>;
  }
  class ParquetReader {
    static openFile(path: string): Promise<ParquetReader>;
    getCursor(columns?: string[]): ParquetCursor;
    getRowCount(): number;
    close(): Promise<void>;
  }
}

export default parquetjs;
