/** One schema step. `version`s are consecutive from 1 and never change once released. */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}
